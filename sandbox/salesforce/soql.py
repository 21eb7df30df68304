"""The SOQL subset the fleet uses, parsed and run against the sandbox store.

Grammar: ``SELECT item (, item)* FROM Type [WHERE cond (AND cond)*] [ORDER BY path [ASC|DESC]
(, ...)*] [LIMIT n]`` where an item is a path or a parent-to-child sub-query ``(SELECT path, ... FROM
<ChildRelationship> [WHERE ...] [ORDER BY ...] [LIMIT n])`` (one level, as in Salesforce; the
relationships in ``CHILD_RELATIONSHIPS``), ``cond`` is ``path op literal`` (``= != <> < <= > >=``) or
``path [NOT] IN (literal, ...)``, and a path may walk lookups (``Product2.WH_Product_ID__c``,
``PricebookEntry.Product2.Billing_Cycle__c``). Literals: 'strings' (backslash escapes ``\\'``,
``\\\\``, ``\\n``...; any other escape is MALFORMED_QUERY), numbers, true/false/null (``field = null``
matches an empty field), dates and datetimes (``2026-01-01T00:00:00Z``). A sub-query's rows come back
nested under the relationship name as a query result of their own (``{"totalSize", "done",
"records"}``), or ``null`` when the parent has none, as the REST API answers ("Understanding Query
Results", SOQL and SOSL Reference). Simplified: text compares and sorts case-sensitively (Salesforce
compares it case-insensitively); nulls sort first. Not supported (answered as MALFORMED_QUERY): OR,
NOT outside IN, functions, semi-joins, nested sub-queries, GROUP BY, OFFSET. Errors carry
Salesforce's error codes.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox.salesforce.store import KEY_PREFIX, Store, all_fields, parse_sf_datetime

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
    | (?P<date>\d{4}-\d{2}-\d{2})
    | (?P<number>-?\d+(?:\.\d+)?)
    | (?P<op>!=|<>|>=|<=|=|<|>)
    | (?P<punct>[(),*])
    | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_ORDERING: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
#: backslash escapes in string literals (SOQL and SOSL Reference, "Quoted String Escape Sequences")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPED = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
#: words that can never be a field or object name (ORDER can: "FROM Order ORDER BY Id" is valid SOQL)
_RESERVED = {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIMIT"}
#: parent-to-child relationship names: parent object -> {relationship: (child object, lookup field)}
CHILD_RELATIONSHIPS: dict[str, dict[str, tuple[str, str]]] = {
    "Account": {"Orders": ("Order", "AccountId"), "Contacts": ("Contact", "AccountId")},
    "Order": {"OrderItems": ("OrderItem", "OrderId")},
    "Product2": {"PricebookEntries": ("PricebookEntry", "Product2Id")},
}


class SoqlError(Exception):
    """Carries the REST error entry Salesforce answers with (HTTP 400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.entry = {"errorCode": code, "message": message}


@dataclass(frozen=True)
class Condition:
    path: str
    op: str
    values: tuple[Any, ...]


@dataclass
class Query:
    fields: list[str]
    sobject: str
    conditions: list[Condition] = field(default_factory=list)
    order: list[tuple[str, bool]] = field(default_factory=list)
    limit: int | None = None
    #: parent-to-child sub-queries, by position in the select list (``sobject`` = the relationship name)
    children: dict[int, Query] = field(default_factory=dict)


@dataclass
class _Tokens:
    items: list[tuple[str, str]]
    pos: int = 0

    def peek(self) -> tuple[str, str] | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
        self.pos += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].upper() == word:
            self.pos += 1
            return True
        return False

    def expect(self, word: str) -> None:
        if not self.keyword(word):
            got = self.peek()
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{got[1] if got else 'end'}', expected {word}")


def tokenize(text: str) -> _Tokens:
    items: list[tuple[str, str]] = []
    pos, text = 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{text[pos:].split()[0]}'")
        kind = match.lastgroup or "word"
        items.append((kind, match.group(kind)))
        pos = match.end()
    return _Tokens(items)


# --- parsing ----------------------------------------------------------------------------------
def parse(text: str) -> Query:
    tokens = tokenize(text)
    query = _select(tokens, nested=False)
    if tokens.peek() is not None:
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{tokens.take()[1]}'")
    return query


def _select(tokens: _Tokens, *, nested: bool) -> Query:
    tokens.expect("SELECT")
    fields, children = _field_list(tokens, nested)
    tokens.expect("FROM")
    query = Query(fields=fields, sobject=_name(tokens), children=children)
    if tokens.keyword("WHERE"):
        query.conditions = _conditions(tokens)
    if tokens.keyword("ORDER"):
        tokens.expect("BY")
        query.order = _order(tokens)
    if tokens.keyword("LIMIT"):
        kind, value = tokens.take()
        if kind != "number":
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}', expected a LIMIT number")
        query.limit = int(value)
    return query


def _name(tokens: _Tokens) -> str:
    kind, value = tokens.take()
    if kind != "word" or value.upper() in _RESERVED:
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}'")
    return value


def _field_list(tokens: _Tokens, nested: bool) -> tuple[list[str], dict[int, Query]]:
    fields: list[str] = []
    children: dict[int, Query] = {}
    while True:
        if tokens.peek() == ("punct", "("):
            if nested:
                raise SoqlError("MALFORMED_QUERY", "Nesting of sub-queries is not supported")
            tokens.take()
            child = _select(tokens, nested=True)
            if tokens.take() != ("punct", ")"):
                raise SoqlError("MALFORMED_QUERY", "unexpected token, expected ')' closing the sub-query")
            children[len(fields)] = child
            fields.append(child.sobject)
        else:
            fields.append(_name(tokens))
        if tokens.peek() != ("punct", ","):
            return fields, children
        tokens.take()


def _conditions(tokens: _Tokens) -> list[Condition]:
    conditions = [_condition(tokens)]
    while tokens.keyword("AND"):
        conditions.append(_condition(tokens))
    if tokens.keyword("OR"):
        raise SoqlError("MALFORMED_QUERY", "unexpected token: 'OR' (the sandbox supports AND only)")
    return conditions


def _condition(tokens: _Tokens) -> Condition:
    path = _name(tokens)
    if tokens.keyword("NOT"):
        tokens.expect("IN")
        return Condition(path, "NOT IN", _value_list(tokens))
    if tokens.keyword("IN"):
        return Condition(path, "IN", _value_list(tokens))
    kind, op = tokens.take()
    if kind != "op":
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{op}', expected an operator")
    return Condition(path, "!=" if op == "<>" else op, (_literal(tokens),))


def _value_list(tokens: _Tokens) -> tuple[Any, ...]:
    if tokens.take() != ("punct", "("):
        raise SoqlError("MALFORMED_QUERY", "unexpected token, expected '('")
    values = [_literal(tokens)]
    while tokens.peek() == ("punct", ","):
        tokens.take()
        values.append(_literal(tokens))
    if tokens.take() != ("punct", ")"):
        raise SoqlError("MALFORMED_QUERY", "unexpected token, expected ')'")
    return tuple(values)


def _literal(tokens: _Tokens) -> Any:
    kind, value = tokens.take()
    if kind == "string":
        return _ESCAPE.sub(_unescape, value[1:-1])
    if kind == "number":
        return float(value)
    if kind == "datetime":
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if kind == "date":
        return value
    if kind == "word" and value.lower() in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[value.lower()]
    raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{value}', expected a literal")


def _unescape(match: re.Match[str]) -> str:
    char = match.group(1)
    found = _ESCAPED.get(char.lower())
    if found is None:
        raise SoqlError("MALFORMED_QUERY", f"invalid escape sequence in a string literal: '\\{char}'")
    return found


def _order(tokens: _Tokens) -> list[tuple[str, bool]]:
    order = []
    while True:
        path = _name(tokens)
        descending = tokens.keyword("DESC")
        if not descending:
            tokens.keyword("ASC")
        order.append((path, descending))
        if tokens.peek() != ("punct", ","):
            return order
        tokens.take()


# --- running ----------------------------------------------------------------------------------
def run(store: Store, query: Query, *, api_version: str) -> list[dict[str, Any]]:
    """The matching records shaped as the REST API returns them (``attributes`` first)."""
    if query.sobject not in KEY_PREFIX:
        raise SoqlError("INVALID_TYPE", f"sObject type '{query.sobject}' is not supported.")
    children = {i: _child_of(query.sobject, sub) for i, sub in query.children.items()}
    plain = [f for i, f in enumerate(query.fields) if i not in children]
    for path in [*plain, *(c.path for c in query.conditions), *(p for p, _ in query.order)]:
        _check_path(query.sobject, path)
    rows = _select_rows(store, query.sobject, _candidates(store, query), query)
    buckets = {index: _by_parent(store, child, lookup, rows) for index, (child, lookup) in children.items()}
    out = []
    for row in rows:
        shaped = _shape(store, query.sobject, row, plain, api_version)
        for index, (child, _) in children.items():
            related = buckets[index].get(row["Id"], [])
            shaped[query.fields[index]] = _nested(store, child, related, query.children[index], api_version)
        out.append(_in_select_order(shaped, query.fields))
    return out


def _candidates(store: Store, query: Query) -> Iterable[dict[str, Any]]:
    """The rows to filter: only the named ones for ``Id = / IN``, else every row of the object."""
    by_id = next((c for c in query.conditions if c.path == "Id" and c.op in ("=", "IN")), None)
    if by_id is None:
        return store.rows(query.sobject)
    found = (store.get(query.sobject, v) for v in dict.fromkeys(by_id.values) if isinstance(v, str))
    return [row for row in found if row is not None]


def _by_parent(store: Store, child: str, lookup: str, parents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    wanted = {row["Id"] for row in parents}
    buckets: dict[str, list[dict[str, Any]]] = {}
    for row in store.rows(child):
        if row.get(lookup) in wanted:
            buckets.setdefault(row[lookup], []).append(row)
    return buckets


def _select_rows(store: Store, sobject: str, rows: Iterable[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    tests = [_predicate(store, sobject, c) for c in query.conditions]
    picked = [r for r in rows if all(test(r) for test in tests)]
    for path, descending in reversed(query.order):
        picked.sort(key=_sorter(store, sobject, path), reverse=descending)
    return picked if query.limit is None else picked[: query.limit]


def _child_of(parent: str, sub: Query) -> tuple[str, str]:
    """The child object and its lookup to ``parent`` for a sub-query's relationship name."""
    found = CHILD_RELATIONSHIPS.get(parent, {}).get(sub.sobject)
    if found is None:
        message = f"Didn't understand relationship '{sub.sobject}' in FROM part of query call. " + (
            "If you are attempting to use a custom relationship, be sure to append the '__r' after the custom "
            "relationship name. Please reference your WSDL or the describe call for the appropriate names."
        )
        raise SoqlError("INVALID_TYPE", message)
    child = found[0]
    for path in [*sub.fields, *(c.path for c in sub.conditions), *(p for p, _ in sub.order)]:
        _check_path(child, path)
    return found


def _nested(
    store: Store, child: str, related: Iterable[dict[str, Any]], sub: Query, version: str
) -> dict[str, Any] | None:
    """A sub-query's result under its parent: a query result of its own, ``null`` when empty."""
    rows = _select_rows(store, child, related, sub)
    if not rows:
        return None
    records = [_shape(store, child, row, sub.fields, version) for row in rows]
    return {"totalSize": len(records), "done": True, "records": records}


def _in_select_order(shaped: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    heads = dict.fromkeys(["attributes", *(f.split(".", 1)[0] for f in fields)])
    return {k: shaped[k] for k in heads if k in shaped}


def attributes(sobject: str, record_id: str, api_version: str) -> dict[str, str]:
    return {"type": sobject, "url": f"/services/data/v{api_version}/sobjects/{sobject}/{record_id}"}


def _check_path(sobject: str, path: str) -> None:
    *hops, last = path.split(".")
    current = sobject
    for hop in hops:
        if hop not in KEY_PREFIX or f"{hop}Id" not in all_fields(current):
            raise SoqlError("INVALID_FIELD", f"Didn't understand relationship '{hop}' in field path. ({path})")
        current = hop
    if last not in all_fields(current):
        raise SoqlError("INVALID_FIELD", f"No such column '{last}' on entity '{current}'.")


def _resolve(store: Store, sobject: str, row: dict[str, Any] | None, path: str) -> Any:
    *hops, last = path.split(".")
    for hop in hops:
        if row is None:
            return None
        row = store.get(hop, str(row.get(f"{hop}Id")))
    return None if row is None else row.get(last)


def _predicate(store: Store, sobject: str, condition: Condition) -> Callable[[dict[str, Any]], bool]:
    """The condition as a row test. A plain field compared with a text, boolean or null literal (every
    filter of an inventory scan) reads the row directly: the same answer as ``_matches``, cheaper."""
    path, op, literal = condition.path, condition.op, condition.values[0]
    if "." in path or op in ("IN", "NOT IN") or not (literal is None or isinstance(literal, str | bool)):
        return lambda row: _matches(store, sobject, row, condition)
    if op == "=":
        return lambda row: bool(row.get(path) == literal)
    if op == "!=":
        return lambda row: bool(row.get(path) != literal)
    if literal is None:
        return lambda row: False
    ordering = _ORDERING[op]

    def ordered(row: dict[str, Any]) -> bool:
        value = row.get(path)
        return value is not None and bool(ordering(value, literal))

    return ordered


def _matches(store: Store, sobject: str, row: dict[str, Any], condition: Condition) -> bool:
    value = _resolve(store, sobject, row, condition.path)
    if condition.op in ("IN", "NOT IN"):
        hit = any(_compare(value, "=", v) for v in condition.values)
        return hit if condition.op == "IN" else not hit
    return _compare(value, condition.op, condition.values[0])


def _compare(value: Any, op: str, literal: Any) -> bool:
    if isinstance(literal, datetime) and isinstance(value, str):
        value = parse_sf_datetime(value)
    elif isinstance(literal, float) and value is not None:
        value = float(value)
    if op in ("=", "!="):
        return bool(value == literal) == (op == "=")
    if value is None or literal is None:
        return False
    return bool(_ORDERING[op](value, literal))


def _sorter(store: Store, sobject: str, path: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    def key(row: dict[str, Any]) -> tuple[bool, Any]:
        value = _resolve(store, sobject, row, path)
        # ascending order puts nulls first, as Salesforce's default NULLS FIRST does
        return (value is not None, value if value is not None else 0)

    return key


def _shape(store: Store, sobject: str, row: dict[str, Any], fields: list[str], version: str) -> dict[str, Any]:
    shaped: dict[str, Any] = {"attributes": attributes(sobject, row["Id"], version)}
    for path in fields:
        head, _, rest = path.partition(".")
        if not rest:
            shaped[head] = row.get(head)
            continue
        related = store.get(head, str(row.get(f"{head}Id")))
        if related is None:
            shaped[head] = None
            continue
        nested = _shape(store, head, related, [rest], version)
        existing = shaped.get(head)
        shaped[head] = {**existing, **nested} if isinstance(existing, dict) else nested
    return shaped

"""Reading a YAML config file so that any bytes give one :class:`ConfigError` line.

:func:`load_yaml` is the only way podroute reads its YAML files (the node config, the
cluster file). Whatever the file holds, it returns the parsed tree or raises
``ConfigError`` naming the file and what is wrong, never another exception:

* size: at most ``max_bytes`` are read (a larger file, or ``/dev/zero``, is an error, not
  an unbounded read);
* encoding: UTF-8 only (an optional BOM is allowed). YAML 1.1 also allows UTF-16, but
  nothing else in podroute's toolchain reads it, so a UTF-16 file is named as such;
* syntax: PyYAML's safe subset; any tag it cannot build (``!!python/...``) or a value its
  constructor rejects (``!!int x``, ``2001-13-45``, a 5,000-digit integer) is an error
  with its line and column;
* duplicate keys at any depth are an error naming the key path and both lines (PyYAML
  would silently keep the last one, so the file would not say what runs);
* nesting deeper than :data:`MAX_DEPTH` levels (Python's recursion limit would otherwise
  end in ``RecursionError``) and documents of more nodes, once aliases are expanded, than
  :data:`MAX_NODES` or the text's length in characters, whichever is more (an "alias bomb",
  or an alias that contains itself: without aliases a node takes at least one character),
  are errors.
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from podroute.schema import ConfigError, clip, join, show

MAX_DEPTH = 32        # nesting levels; podroute's own files need 4 (peers[i].key)
MAX_NODES = 200_000   # YAML nodes after alias expansion, or one per byte of text if that is more
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The file's bytes. Raises ConfigError (path "") if it cannot be read or holds more
    than ``max_bytes``. Reads at most ``max_bytes + 1`` bytes whatever the file is."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError("", f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ConfigError("", f"larger than the {max_bytes}-byte limit for this file")
    return data


def decode_utf8(data: bytes) -> str:
    """``data`` as text. Raises ConfigError naming the line and column of the first byte
    that is not UTF-8 (and the encoding when a UTF-16/32 byte order mark says it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        for bom, name in _BOMS:
            if data.startswith(bom):
                raise ConfigError("", f"is {name} text (byte order mark); save it as UTF-8") from None
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError("", f"not UTF-8 text: line {line}, column {column}: byte 0x{data[e.start]:02x} "
                              f"({e.reason})") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader with depth, expansion and duplicate-key checks, and every constructor
    failure turned into a ConstructorError carrying the node's position."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._max_nodes = max(MAX_NODES, len(stream))

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer recurses once per level: stop long before Python's recursion limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            self._check_tree(node)
        return node

    def _check_tree(self, root: Node) -> None:
        """Walk the composed document as the constructor will see it (aliases expanded)."""
        count = 0
        stack: list[tuple[Node, str, int]] = [(root, "", 1)]
        while stack:
            node, path, depth = stack.pop()
            count += 1
            if count > self._max_nodes or depth > MAX_DEPTH:
                what = (f"more than {self._max_nodes} nodes" if count > self._max_nodes
                        else f"nesting deeper than {MAX_DEPTH} levels")
                raise ConstructorError(None, None, f"{what} once aliases are expanded (an alias bomb, "
                                       "or an alias inside itself?)", node.start_mark)
            if isinstance(node, SequenceNode):
                stack.extend((item, join(path, i), depth + 1) for i, item in enumerate(node.value))
            elif isinstance(node, MappingNode):
                first: dict[Any, Node] = {}
                for key_node, value_node in node.value:
                    key_path = path
                    if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE_TAG:
                        key = self.construct_object(key_node)
                        key_path = join(path, clip(str(key)))
                        try:
                            seen = first.setdefault(key, key_node)
                        except TypeError:
                            seen = key_node
                        if seen is not key_node:
                            raise _DuplicateKey(key_path, seen.start_mark.line + 1, key_node.start_mark.line + 1)
                    stack.append((key_node, key_path, depth + 1))
                    stack.append((value_node, key_path, depth + 1))

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError) as e:
            kind = node.tag.rsplit(":", 1)[-1]
            detail = f" ({clip(str(e), 80)})" if isinstance(e, ValueError) and str(e) else ""
            raise ConstructorError(None, None, f"invalid {kind} value {show(node.value)}{detail}",
                                   node.start_mark) from None


class _DuplicateKey(Exception):
    def __init__(self, path: str, first: int, again: int) -> None:
        super().__init__(path)
        self.path, self.first, self.again = path, first, again


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    if isinstance(e, yaml.reader.ReaderError):
        line = text.count("\n", 0, e.position) + 1
        column = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        return f"line {line}, column {column}: character U+{e.character:04X} is not allowed in YAML"
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{where}{problem}"


def parse_yaml(text: str) -> Any:
    """Parse one YAML document. Raises ConfigError (file unset) for any bad input."""
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here
        return loader.get_single_data()
    except _DuplicateKey as e:
        raise ConfigError(e.path, f"duplicate key at line {e.again} (first at line {e.first})") from None
    except yaml.YAMLError as e:
        raise ConfigError("", f"invalid YAML: {_yaml_problem(e, text)}") from None
    except RecursionError:
        # Not expected with the depth checks above; kept so that no input ends in a traceback.
        raise ConfigError("", "invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: str | os.PathLike[str], max_bytes: int) -> Any:
    """Read, decode and parse a YAML file. Raises ConfigError with ``file`` = ``path``."""
    try:
        return parse_yaml(decode_utf8(read_bounded(path, max_bytes)))
    except ConfigError as e:
        raise e.with_file(str(path)) from None

#!/usr/bin/env python3
"""Parse every .bicep file under infra/ with tree-sitter-bicep and report on it.

    python3 scripts/check_infra.py                       # syntax check only
    python3 scripts/check_infra.py --app-settings        # + print the function app's app settings as JSON
    python3 scripts/check_infra.py --required A B ...    # + fail unless every named app setting is set
    python3 scripts/check_infra.py --app-settings --with-source   # values as {"value", "from"}

Exit status: 0 when every file parses and every required setting is found, 1 otherwise (with a
message on stderr saying what is wrong), 2 for bad usage or missing packages.

Needs `pip install tree-sitter tree-sitter-bicep`. This checks syntax and the template's own shape
only; it is no substitute for `az bicep build` (types, API versions, property names).

App settings are found where the template keeps them: in any variable, parameter default or object
property whose name contains "appSettings" (case-insensitive), either as arrays of
`{ name: '...', value: ... }` objects (siteConfig.appSettings style, also inside concat(), union()
and ternaries) or as objects of `Name: value` pairs (sites/config 'appsettings' style). A value
that is a plain string literal is printed as its text; anything else (interpolated strings,
expressions) is printed as its Bicep source. A setting that gets different values in different
places (e.g. different branches) is printed as "a | b".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

try:
    import tree_sitter
    import tree_sitter_bicep
except ImportError as exc:  # pragma: no cover - environment problem, not a template problem
    sys.stderr.write(
        f"check_infra: {exc}. Install the parser first: pip install tree-sitter tree-sitter-bicep\n"
    )
    sys.exit(2)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INFRA = ROOT / "infra"
APP_SETTINGS_NAME = re.compile(r"appsettings", re.IGNORECASE)
# Node types whose children are "the same value", so an object below them is still a settings map.
TRANSPARENT = {
    "call_expression",
    "arguments",
    "ternary_expression",
    "parenthesized_expression",
    "array",  # an array of maps, e.g. union() inputs collected in a list
}


def make_parser() -> tree_sitter.Parser:
    language = tree_sitter.Language(tree_sitter_bicep.language())
    try:
        return tree_sitter.Parser(language)
    except TypeError:  # older py-tree-sitter: Parser() then set_language()
        parser = tree_sitter.Parser()
        parser.set_language(language)
        return parser


def walk(node):
    """Every node below (and including) `node`, depth first, in source order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def text(node) -> str:
    return node.text.decode("utf-8")


def syntax_errors(tree, path: Path) -> list[str]:
    problems = []
    for node in walk(tree.root_node):
        if node.is_missing:
            row, col = node.start_point
            problems.append(f"{path}:{row + 1}:{col + 1}: missing {node.type!r}")
        elif node.type == "ERROR":
            row, col = node.start_point
            snippet = text(node).strip().splitlines()
            shown = snippet[0][:60] if snippet else ""
            problems.append(f"{path}:{row + 1}:{col + 1}: syntax error near {shown!r}")
    return problems


ESCAPE = re.compile(r"\\(u\{[0-9A-Fa-f]+\}|.)", re.DOTALL)
SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}


def string_literal(node) -> str | None:
    """The value of a plain (non-interpolated) string literal, else None.

    Works from the source text rather than the grammar's pieces, which drop some escapes (\\$).
    """
    if node is None or node.type != "string":
        return None
    if any(child.type == "interpolation" for child in node.named_children):
        return None
    raw = text(node)
    if raw.startswith("'''"):  # multi-line string: no escapes; a newline right after the quotes is dropped
        body = raw[3:-3]
        return body[2:] if body.startswith("\r\n") else body[1:] if body.startswith("\n") else body

    def unescape(match: re.Match) -> str:
        code = match.group(1)
        if code.startswith("u{"):
            return chr(int(code[2:-1], 16))
        return SIMPLE_ESCAPES.get(code, match.group(0))

    return ESCAPE.sub(unescape, raw[1:-1])


def property_key(prop) -> str | None:
    key = prop.named_children[0] if prop.named_children else None
    if key is None:
        return None
    if key.type == "string":
        return string_literal(key)
    return text(key)


def property_value(prop):
    return prop.named_children[-1] if len(prop.named_children) >= 2 else None


def value_text(node) -> str:
    literal = string_literal(node)
    return literal if literal is not None else text(node)


def declaration_name_and_value(node):
    """(name, value node) of a variable/parameter declaration or object property, else (None, None)."""
    if node.type == "variable_declaration":
        named = node.named_children
        ident = next((c for c in named if c.type == "identifier"), None)
        value = named[-1] if len(named) >= 2 else None
        return (text(ident) if ident else None), value
    if node.type == "parameter_declaration":
        named = node.named_children
        ident = next((c for c in named if c.type == "identifier"), None)
        # `param x type = default`: the default is the last child when there are three.
        value = named[-1] if len(named) >= 3 else None
        return (text(ident) if ident else None), value
    if node.type == "object_property":
        return property_key(node), property_value(node)
    return None, None


def settings_in(root, source: str, found: dict[str, list[tuple[str, str]]]) -> None:
    """Collect app settings below `root` (the value of something named like appSettings)."""
    for node in walk(root):
        if node.type != "object":
            continue
        props = [c for c in node.named_children if c.type == "object_property"]
        keys = {property_key(p): p for p in props}
        if "name" in keys and "value" in keys:
            name = string_literal(property_value(keys["name"]))
            if name is not None:
                found.setdefault(name, []).append((value_text(property_value(keys["value"])), source))
            continue
        # An object used directly as a settings map: only when nothing but calls, ternaries and
        # parentheses separate it from the root (not an object nested in some other object).
        direct = True
        if node.id != root.id:
            parent = node.parent
            while parent is not None and parent.id != root.id:
                if parent.type not in TRANSPARENT:
                    direct = False
                    break
                parent = parent.parent
            direct = direct and parent is not None
        if direct:
            for prop in props:
                key = property_key(prop)
                value = property_value(prop)
                if key is not None and value is not None:
                    found.setdefault(key, []).append((value_text(value), source))


def app_settings(trees: list[tuple[Path, object]]) -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    for path, tree in trees:
        for node in walk(tree.root_node):
            name, value = declaration_name_and_value(node)
            if name and value is not None and APP_SETTINGS_NAME.search(name):
                settings_in(value, f"{path.name}:{name}", found)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--infra", type=Path, default=DEFAULT_INFRA, help="folder with the .bicep files (default: infra/)")
    parser.add_argument("--app-settings", action="store_true", help="print the app settings as JSON")
    parser.add_argument("--with-source", action="store_true", help="with --app-settings: say where each value comes from")
    parser.add_argument("--required", nargs="+", metavar="NAME", default=[], help="app settings that must be set")
    args = parser.parse_args(argv)

    files = sorted(args.infra.rglob("*.bicep"))
    if not files:
        sys.stderr.write(f"check_infra: no .bicep files under {args.infra}\n")
        return 1

    ts_parser = make_parser()
    trees, problems = [], []
    for path in files:
        tree = ts_parser.parse(path.read_bytes())
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        problems.extend(syntax_errors(tree, shown))
        trees.append((shown, tree))
    if problems:
        sys.stderr.write("check_infra: Bicep syntax errors:\n  " + "\n  ".join(problems) + "\n")
        return 1

    settings = app_settings(trees)
    status = 0
    if args.app_settings:
        out = {}
        for name, values in settings.items():
            distinct = list(dict.fromkeys(v for v, _ in values))
            joined = " | ".join(distinct)
            out[name] = {"value": joined, "from": sorted({s for _, s in values})} if args.with_source else joined
        print(json.dumps(out, indent=2))
    if args.required:
        missing = [name for name in args.required if name not in settings]
        if missing:
            sys.stderr.write("check_infra: app settings not set by the template: " + ", ".join(missing) + "\n")
            status = 1
    if not args.app_settings and status == 0:
        print(f"check_infra: {len(files)} Bicep file(s) parse cleanly; {len(settings)} app settings found.")
    return status


if __name__ == "__main__":
    sys.exit(main())

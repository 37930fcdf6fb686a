#!/usr/bin/env python3
"""Parse every .bicep file under infra/ with tree-sitter-bicep and check what reaches the function app.

    python3 scripts/check_infra.py                       # syntax check, and the app settings can be followed
    python3 scripts/check_infra.py --app-settings        # + print the function app's app settings as JSON
    python3 scripts/check_infra.py --cases               # + print them per parameter combination, as JSON
    python3 scripts/check_infra.py --required A B ...    # + fail unless every case sets each named setting
    python3 scripts/check_infra.py --forbid 'A@writeBehindQueue=redisStream'   # + fail if such cases set A
    python3 scripts/check_infra.py --vary planSku        # + evaluate every allowed value of planSku too

Exit status: 0 when every file parses, the settings can be followed and every --required/--forbid
rule holds; 1 otherwise (with a message on stderr saying what is wrong); 2 for bad usage or missing
packages.

Needs `pip install tree-sitter tree-sitter-bicep`. This checks syntax and the template's own shape
only; it is no substitute for `az bicep build` (types, API versions, property names).

What is checked is what actually reaches the function app: `properties.siteConfig.appSettings` of
the `Microsoft.Web/sites` resource (kind `functionapp…`), followed from the entry template
(infra/main.bicep) through module parameters, variables, `concat()`, `union()` and ternaries, with
the parameter values a deployment would use (main.parameters.json, else the defaults). Settings kept
in variables that never reach the site count for nothing. Every parameter whose value changes the
settings and that has a finite set of values (`@allowed([...])` or `bool`) is evaluated with each of
its values, as is every parameter named with --vary: each combination is a "case". A rule
`NAME@param=value` applies to the cases where that parameter has that value; a plain `NAME` applies
to every case. A value that depends on a deployment (a resource's property, `uniqueString()`, ...) is
kept as its Bicep source ("expression"); a name must always be a plain string.
"""

from __future__ import annotations

import argparse
import itertools
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
SITE_TYPE = "Microsoft.Web/sites"


class TemplateError(Exception):
    """The template cannot be followed (or breaks a rule); the message says where and why."""


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


def named(node) -> list:
    """The named children of `node`, comments left out."""
    return [c for c in node.named_children if c.type != "comment"]


def where(path: Path, node) -> str:
    row, col = node.start_point
    return f"{path}:{row + 1}:{col + 1}"


def syntax_errors(tree, path: Path) -> list[str]:
    problems = []
    for node in walk(tree.root_node):
        if node.is_missing:
            problems.append(f"{where(path, node)}: missing {node.type!r}")
        elif node.type == "ERROR":
            snippet = text(node).strip().splitlines()
            shown = snippet[0][:60] if snippet else ""
            problems.append(f"{where(path, node)}: syntax error near {shown!r}")
    return problems


ESCAPE = re.compile(r"\\(u\{[0-9A-Fa-f]+\}|.)", re.DOTALL)
SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", "'": "'", "$": "$"}


def unescape(raw: str) -> str:
    def one(match: re.Match) -> str:
        code = match.group(1)
        if code.startswith("u{"):
            return chr(int(code[2:-1], 16))
        return SIMPLE_ESCAPES.get(code, match.group(0))

    return ESCAPE.sub(one, raw)


def string_literal(node) -> str | None:
    """The value of a plain (non-interpolated) string literal, else None.

    Works from the source text rather than the grammar's pieces, which drop some escapes (\\$).
    """
    if node is None or node.type != "string":
        return None
    if any(child.type == "interpolation" for child in named(node)):
        return None
    raw = text(node)
    if raw.startswith("'''"):  # multi-line string: no escapes; a newline right after the quotes is dropped
        body = raw[3:-3]
        return body[2:] if body.startswith("\r\n") else body[1:] if body.startswith("\n") else body
    return unescape(raw[1:-1])


def property_key(prop) -> str | None:
    key = named(prop)[0] if named(prop) else None
    if key is None:
        return None
    if key.type == "string":
        return string_literal(key)
    return text(key)


def property_value(prop):
    return named(prop)[-1] if len(named(prop)) >= 2 else None


def object_property(obj, name: str):
    """The value node of property `name` of an object literal, else None."""
    if obj is None or obj.type != "object":
        return None
    for prop in named(obj):
        if prop.type == "object_property" and property_key(prop) == name:
            return property_value(prop)
    return None


# ---------------------------------------------------------------------------------------------
# A small evaluator: enough Bicep to follow app settings through parameters, variables and modules
# ---------------------------------------------------------------------------------------------


class Expression:
    """A value that depends on the deployment (a resource property, uniqueString(), ...): its source."""

    def __init__(self, source: str):
        self.source = source

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


class Declaration:
    def __init__(self, kind: str, node, decorators):
        self.kind = kind  # param | var | resource | module | output | ...
        self.node = node
        self.decorators = decorators

    @property
    def value_node(self):
        children = named(self.node)
        if self.kind == "param":
            # `param x type = default`: the default is the last child when there are three.
            return children[-1] if len(children) >= 3 else None
        if self.kind == "var":
            return children[-1] if len(children) >= 2 else None
        return None

    def allowed(self, file: "BicepFile"):
        """The values a parameter may take, when they are finite: @allowed([...]) or bool."""
        if self.decorators is not None:
            for decorator in named(self.decorators):
                call = named(decorator)[0] if named(decorator) else None
                if call is not None and call.type == "call_expression" and text(named(call)[0]) == "allowed":
                    args = named(named(call)[1])
                    if args and args[0].type == "array":
                        return [Scope(file, {}, None).eval(item) for item in named(args[0])]
        type_node = next((c for c in named(self.node) if c.type == "type"), None)
        if type_node is not None and text(type_node) == "bool":
            return [True, False]
        return None


class BicepFile:
    def __init__(self, path: Path, shown: Path, tree):
        self.path = path
        self.shown = shown
        self.tree = tree
        self.declarations: dict[str, Declaration] = {}
        decorators = None
        kinds = {
            "parameter_declaration": "param",
            "variable_declaration": "var",
            "resource_declaration": "resource",
            "module_declaration": "module",
        }
        for node in named(tree.root_node):
            if node.type == "decorators":
                decorators = node
                continue
            kind = kinds.get(node.type)
            if kind is not None:
                ident = next((c for c in named(node) if c.type == "identifier"), None)
                if ident is not None:
                    self.declarations[text(ident)] = Declaration(kind, node, decorators)
            decorators = None

    def of_kind(self, kind: str):
        return [(name, d) for name, d in self.declarations.items() if d.kind == kind]


def to_string(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def deep_union(left, right):
    if isinstance(left, dict) and isinstance(right, dict):
        merged = dict(left)
        for key, value in right.items():
            merged[key] = deep_union(merged[key], value) if key in merged else value
        return merged
    return right


class Scope:
    """One template file evaluated with given parameter values.

    `bindings` maps a parameter to a value, or to a zero-argument function that computes it (a
    module's arguments, computed in the caller's scope when first read). `touched` (the entry scope
    only) collects the parameters read while evaluating.
    """

    MAX_DEPTH = 200

    def __init__(self, file: BicepFile, bindings: dict, touched: set | None):
        self.file = file
        self.bindings = bindings
        self.touched = touched
        self.depth = 0

    def fail(self, node, message: str):
        raise TemplateError(f"{where(self.file.shown, node)}: {message}")

    def lookup(self, name: str, node):
        declaration = self.file.declarations.get(name)
        if declaration is None:
            return Expression(name)
        if declaration.kind == "param":
            if self.touched is not None:
                self.touched.add(name)
            if name in self.bindings:
                bound = self.bindings[name]
                return bound() if callable(bound) else bound
            default = declaration.value_node
            return self.eval(default) if default is not None else Expression(name)
        if declaration.kind == "var":
            return self.eval(declaration.value_node)
        return Expression(name)  # a resource or module: its properties are known only when deployed

    def eval(self, node):
        self.depth += 1
        if self.depth > self.MAX_DEPTH:
            self.fail(node, "expression nests too deep (a cycle?)")
        try:
            return self._eval(node)
        finally:
            self.depth -= 1

    def _eval(self, node):
        kind = node.type
        if kind == "string":
            parts = []
            for child in named(node):
                if child.type == "interpolation":
                    value = self.eval(named(child)[0])
                    if isinstance(value, Expression):
                        return Expression(text(node))
                    parts.append(to_string(value))
            literal = string_literal(node)
            if literal is not None:
                return literal
            # Rebuild from the pieces: escapes in the literal parts, values in the interpolations.
            raw, out, values = text(node)[1:-1], [], iter(parts)
            for piece in re.split(r"(\$\{[^}]*\})", raw):
                out.append(next(values) if piece.startswith("${") else unescape(piece))
            return "".join(out)
        if kind == "number":
            return int(text(node))
        if kind == "boolean":
            return text(node) == "true"
        if kind == "null":
            return None
        if kind == "identifier":
            return self.lookup(text(node), node)
        if kind == "parenthesized_expression":
            return self.eval(named(node)[0])
        if kind == "array":
            return [self.eval(item) for item in named(node)]
        if kind == "object":
            result = {}
            for prop in named(node):
                if prop.type != "object_property":
                    continue
                key, value = property_key(prop), property_value(prop)
                if key is None or value is None:
                    return Expression(text(node))
                result[key] = self.eval(value)
            return result
        if kind == "unary_expression":
            operator = text(node.children[0])
            value = self.eval(named(node)[-1])
            if isinstance(value, Expression):
                return Expression(text(node))
            if operator == "!":
                return not value
            if operator == "-":
                return -value
            return Expression(text(node))
        if kind == "binary_expression":
            return self.binary(node)
        if kind == "ternary_expression":
            condition, then, otherwise = named(node)[:3]
            decided = self.eval(condition)
            if not isinstance(decided, bool):
                self.fail(condition, f"cannot decide {text(condition)!r} before deployment")
            return self.eval(then if decided else otherwise)
        if kind == "member_expression":
            target = self.eval(named(node)[0])
            prop = text(named(node)[-1])
            if isinstance(target, dict) and prop in target:
                return target[prop]
            return Expression(text(node))
        if kind == "subscript_expression":
            target, index = self.eval(named(node)[0]), self.eval(named(node)[1])
            try:
                return target[index]
            except (TypeError, KeyError, IndexError):
                return Expression(text(node))
        if kind == "call_expression":
            return self.call(node)
        return Expression(text(node))

    def binary(self, node):
        operator = next(text(c) for c in node.children if not c.is_named)
        left_node, right_node = named(node)[0], named(node)[-1]
        left = self.eval(left_node)
        if operator in ("&&", "||") and isinstance(left, bool):
            if (operator == "&&" and not left) or (operator == "||" and left):
                return left
            right = self.eval(right_node)
            return right if isinstance(right, bool) else Expression(text(node))
        if operator == "??":
            return self.eval(right_node) if left is None else left
        right = self.eval(right_node)
        if isinstance(left, Expression) or isinstance(right, Expression):
            return Expression(text(node))
        if operator == "==":
            return left == right
        if operator == "!=":
            return left != right
        if operator in ("=~", "!~"):
            same = str(left).lower() == str(right).lower()
            return same if operator == "=~" else not same
        try:
            return {
                "<": lambda: left < right,
                "<=": lambda: left <= right,
                ">": lambda: left > right,
                ">=": lambda: left >= right,
                "+": lambda: left + right,
                "-": lambda: left - right,
                "*": lambda: left * right,
            }[operator]()
        except (KeyError, TypeError):
            return Expression(text(node))

    def call(self, node):
        function = text(named(node)[0])
        args = [self.eval(a) for a in named(named(node)[1])] if len(named(node)) > 1 else []
        if any(isinstance(a, Expression) for a in args):
            return Expression(text(node))
        if function == "concat" and args:
            if all(isinstance(a, list) for a in args):
                return [item for a in args for item in a]
            return "".join(to_string(a) for a in args)
        if function == "union" and args:
            if all(isinstance(a, dict) for a in args):
                merged = {}
                for a in args:
                    merged = deep_union(merged, a)
                return merged
            if all(isinstance(a, list) for a in args):
                out = []
                for a in args:
                    out.extend(item for item in a if item not in out)
                return out
        if function == "string" and len(args) == 1:
            return args[0] if isinstance(args[0], str) else json.dumps(args[0]) if isinstance(args[0], (dict, list)) else to_string(args[0])
        if function == "empty" and len(args) == 1:
            return not args[0]
        if function in ("toLower", "toUpper") and len(args) == 1 and isinstance(args[0], str):
            return args[0].lower() if function == "toLower" else args[0].upper()
        if function == "length" and len(args) == 1:
            return len(args[0])
        return Expression(text(node))


# ---------------------------------------------------------------------------------------------
# Finding the site and its settings
# ---------------------------------------------------------------------------------------------


def resource_type(declaration: Declaration) -> str | None:
    type_node = next((c for c in named(declaration.node) if c.type == "string"), None)
    literal = string_literal(type_node)
    return literal.split("@", 1)[0] if literal else None


def is_existing(declaration: Declaration) -> bool:
    """`resource x '...' existing = {...}`: a reference, not something this template deploys."""
    return "existing" in text(declaration.node).split("=", 1)[0].split()


def resource_body(scope: Scope, declaration: Declaration):
    """The body object of a resource or module, or None when its condition is false."""
    body = named(declaration.node)[-1]
    if body.type == "if_statement":
        condition, body = named(body)[0], named(body)[-1]
        decided = scope.eval(condition)
        if not isinstance(decided, bool):
            scope.fail(condition, f"cannot decide {text(condition)!r} before deployment")
        if not decided:
            return None
    if body.type == "for_statement":
        scope.fail(body, "a loop of sites or modules is not followed by this checker")
    return body


def site_settings(files: dict[Path, BicepFile], scope: Scope, found: list) -> None:
    """Appends (where, settings value) for every function app site reachable from `scope`."""
    file = scope.file
    for name, declaration in file.of_kind("resource"):
        kind = resource_type(declaration)
        if kind is None:
            continue
        if is_existing(declaration):
            continue
        if kind.lower() == "microsoft.web/sites/config":
            scope.fail(declaration.node, "app settings set by a sites/config resource are not followed; use siteConfig.appSettings")
        if kind != SITE_TYPE:
            continue
        body = resource_body(scope, declaration)
        if body is None:
            continue
        site_kind = scope.eval(object_property(body, "kind")) if object_property(body, "kind") else ""
        if not (isinstance(site_kind, str) and "functionapp" in site_kind):
            continue
        # A child `config` resource named `appsettings` replaces every app setting at deployment.
        for inner in walk(body):
            if inner.type == "resource_declaration":
                inner_type = string_literal(next((c for c in named(inner) if c.type == "string"), None)) or ""
                if inner_type.lower().split("@", 1)[0] in ("config", "microsoft.web/sites/config"):
                    scope.fail(inner, "app settings set by a nested config resource are not followed; use siteConfig.appSettings")
        properties = object_property(body, "properties")
        if properties is None:
            scope.fail(body, "the site has no properties")
        site_config = object_property(properties, "siteConfig") if properties.type == "object" else None
        config = scope.eval(site_config) if site_config is not None else scope.eval(properties).get("siteConfig")
        if not isinstance(config, dict):
            scope.fail(site_config or properties, "siteConfig cannot be followed")
        found.append((f"{file.shown}:{name}", config.get("appSettings", []), site_config or properties))
    for name, declaration in file.of_kind("module"):
        path_node = next((c for c in named(declaration.node) if c.type == "string"), None)
        relative = string_literal(path_node)
        if relative is None:
            scope.fail(declaration.node, "module path must be a plain string")
        if ":" in relative.split("/", 1)[0]:
            continue  # a registry module (br:, ts:): not part of this folder
        target = (file.path.parent / relative).resolve()
        if target not in files:
            scope.fail(declaration.node, f"module {relative} not found")
        body = resource_body(scope, declaration)
        if body is None:
            continue
        params = object_property(body, "params")
        bindings = {}
        if params is not None:
            for prop in named(params):
                if prop.type == "object_property":
                    bindings[property_key(prop)] = (lambda node=property_value(prop): scope.eval(node))
        site_settings(files, Scope(files[target], bindings, None), found)


def settings_list(where_: str, value, scope_node, scope: Scope) -> dict[str, dict]:
    if not isinstance(value, list):
        scope.fail(scope_node, f"{where_}: appSettings is not a list the checker can follow ({value!r})")
    settings: dict[str, dict] = {}
    for item in value:
        if not isinstance(item, dict) or "name" not in item or "value" not in item:
            scope.fail(scope_node, f"{where_}: an app setting is not a {{ name, value }} object: {item!r}")
        name, setting = item["name"], item["value"]
        if not isinstance(name, str):
            scope.fail(scope_node, f"{where_}: an app setting's name is not a plain string: {name!r}")
        if name in settings:
            scope.fail(scope_node, f"{where_}: app setting {name} is set twice")
        if isinstance(setting, Expression):
            settings[name] = {"expression": setting.source}
        elif isinstance(setting, str):
            settings[name] = {"value": setting}
        else:
            scope.fail(scope_node, f"{where_}: app setting {name} is not a string: {setting!r}")
    return settings


def parameter_file_values(path: Path | None) -> dict:
    if path is None or not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {name: spec["value"] for name, spec in data.get("parameters", {}).items() if "value" in spec}


def evaluate(files: dict[Path, BicepFile], entry: BicepFile, fixed: dict, case: dict):
    """(site, settings, touched parameters) for one combination of parameter values."""
    touched: set = set()
    scope = Scope(entry, {**fixed, **case}, touched)
    found: list = []
    site_settings(files, scope, found)
    if not found:
        raise TemplateError(f"{entry.shown}: no Microsoft.Web/sites resource of kind functionapp is deployed")
    if len(found) > 1:
        raise TemplateError(f"{entry.shown}: more than one function app site: " + ", ".join(f[0] for f in found))
    site, value, node = found[0]
    return site, settings_list(site, value, node, scope), touched


def cases(files: dict[Path, BicepFile], entry: BicepFile, fixed: dict, vary: list[str]):
    """Every combination of the finite parameters that change the settings (and of `vary`)."""
    domains: dict[str, list] = {}

    def domain(name: str) -> list | None:
        declaration = entry.declarations.get(name)
        if declaration is None or declaration.kind != "param":
            return None
        return declaration.allowed(entry)

    for name in vary:
        values = domain(name)
        if values is None:
            raise TemplateError(f"--vary {name}: not a parameter of {entry.shown} with @allowed values or type bool")
        domains[name] = values
    while True:
        names = sorted(domains)
        results, touched_all, site = [], set(), None
        for values in itertools.product(*(domains[n] for n in names)):
            case = dict(zip(names, values))
            site, settings, touched = evaluate(files, entry, fixed, case)
            touched_all |= touched
            effective = {n: case.get(n, fixed.get(n)) for n in names}
            results.append({"parameters": effective, "settings": settings})
        grew = False
        for name in sorted(touched_all - set(domains)):
            values = domain(name)
            if values is not None:
                domains[name] = values
                grew = True
        if not grew:
            return site, domains, results


def rule(text_: str):
    """NAME or NAME@param=value -> (NAME, param or None, value or None)."""
    if "@" in text_:
        name, condition = text_.split("@", 1)
        if "=" not in condition:
            raise SystemExit(f"check_infra: bad rule {text_!r}: expected NAME@param=value")
        param, value = condition.split("=", 1)
        return name, param, value
    return text_, None, None


def applies(case: dict, param: str | None, value: str | None) -> bool:
    if param is None:
        return True
    return to_string(case["parameters"].get(param)) == value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--infra", type=Path, default=DEFAULT_INFRA, help="folder with the .bicep files (default: infra/)")
    parser.add_argument("--entry", default="main.bicep", help="the template deployed, inside --infra (default: main.bicep)")
    parser.add_argument(
        "--parameters",
        default="main.parameters.json",
        help="parameters file inside --infra (default: main.parameters.json; '' for the defaults only)",
    )
    parser.add_argument("--app-settings", action="store_true", help="print every setting the site gets, over all cases, as JSON")
    parser.add_argument("--with-source", action="store_true", help="with --app-settings: say in which cases each setting is set")
    parser.add_argument("--cases", action="store_true", help="print the site's settings for each parameter combination, as JSON")
    parser.add_argument("--vary", nargs="+", metavar="PARAM", default=[], help="also evaluate every allowed value of these parameters")
    parser.add_argument("--required", nargs="+", metavar="NAME[@param=value]", default=[], help="app settings that must be set")
    parser.add_argument("--forbid", nargs="+", metavar="NAME[@param=value]", default=[], help="app settings that must not be set")
    args = parser.parse_args(argv)

    files_found = sorted(args.infra.rglob("*.bicep"))
    if not files_found:
        sys.stderr.write(f"check_infra: no .bicep files under {args.infra}\n")
        return 1

    ts_parser = make_parser()
    files: dict[Path, BicepFile] = {}
    problems = []
    for path in files_found:
        tree = ts_parser.parse(path.read_bytes())
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        problems.extend(syntax_errors(tree, shown))
        files[path.resolve()] = BicepFile(path.resolve(), shown, tree)
    if problems:
        sys.stderr.write("check_infra: Bicep syntax errors:\n  " + "\n  ".join(problems) + "\n")
        return 1

    entry = files.get((args.infra / args.entry).resolve())
    if entry is None:
        sys.stderr.write(f"check_infra: no {args.entry} under {args.infra}\n")
        return 1
    fixed = parameter_file_values(args.infra / args.parameters if args.parameters else None)
    try:
        site, domains, results = cases(files, entry, fixed, args.vary)
    except TemplateError as error:
        sys.stderr.write(f"check_infra: {error}\n")
        return 1

    status = 0
    for option, must_be_set in (("required", True), ("forbid", False)):
        for spec in getattr(args, option):
            name, param, value = rule(spec)
            if param is not None and param not in domains:
                sys.stderr.write(f"check_infra: rule {spec!r}: {param} is not a varied parameter (add --vary {param})\n")
                status = 1
                continue
            for case in results:
                if applies(case, param, value) and (name in case["settings"]) != must_be_set:
                    said = "not set" if must_be_set else "set, and must not be"
                    sys.stderr.write(f"check_infra: {name} is {said} when {json.dumps(case['parameters'])}\n")
                    status = 1

    if args.cases:
        print(json.dumps({"site": site, "domains": domains, "cases": results}, indent=2))
    if args.app_settings:
        merged: dict[str, dict] = {}
        for case in results:
            for name, setting in case["settings"].items():
                shown = setting.get("value", setting.get("expression"))
                entry_ = merged.setdefault(name, {"values": [], "when": []})
                if shown not in entry_["values"]:
                    entry_["values"].append(shown)
                entry_["when"].append(" ".join(f"{k}={to_string(v)}" for k, v in case["parameters"].items()))
        out = {}
        for name, entry_ in merged.items():
            joined = " | ".join(entry_["values"])
            every = len(entry_["when"]) == len(results)
            out[name] = {"value": joined, "when": "always" if every else entry_["when"]} if args.with_source else joined
        print(json.dumps(out, indent=2))
    if not (args.app_settings or args.cases) and status == 0:
        names = {n for case in results for n in case["settings"]}
        print(
            f"check_infra: {len(files)} Bicep file(s) parse cleanly; {site} gets {len(names)} app settings "
            f"over {len(results)} case(s) of {', '.join(domains) or 'the defaults'}."
        )
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The machinery behind stylebatch.requests: a request field carries its flag, help, type and check
in one place, and from that one place come the argparse flags, validation and `to_argv()`.

Pure (argparse and dataclasses only): the operator builds pod commands with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
import re
import sys
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, NoReturn

from stylebatch.errors import BadInput

Check = Callable[[Any], "str | None"]  # a problem in words ("must be at least 1"), or None


@dataclass(frozen=True)
class Flag:
    """How one request field appears on the command line."""

    flags: tuple[str, ...]  # ("-o", "--output"); () for a positional argument
    help: str
    kind: type = str  # str, int, float or bool (a switch: present means True)
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    exclusive: str | None = None  # fields sharing this name exclude each other
    metavar: str | None = None
    many: bool = False  # repeatable: the value is a tuple, one flag per item

    @property
    def name(self) -> str:
        """How messages name the field: its long flag, or its metavar for a positional."""
        return self.flags[-1] if self.flags else (self.metavar or "argument")


def flag(*flags: str, help: str, kind: type = str, default: Any = None, check: Check | None = None,
         choices: tuple[str, ...] | None = None, required: bool = False, exclusive: str | None = None,
         metavar: str | None = None, many: bool = False) -> Any:
    """A request field with its flag. No flags: a positional argument (required). many: a
    repeatable flag (`--content a --content b`) whose value is a tuple of `kind`, () when absent."""
    meta = Flag(tuple(flags), help, kind, check, choices, required or not flags, exclusive, metavar, many)
    if kind is bool:
        default = False
    if many:
        default = ()
    return field(default=default, metadata={"flag": meta})


def options(cls: type, title: str) -> Any:
    """A request field holding a group of options shared by several requests (one argparse group)."""
    return field(default_factory=cls, metadata={"group": title})


def at_least(least: int) -> Check:
    return lambda v: None if v >= least else f"must be at least {least}"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}"


_KIND_WORDS = {int: "a whole number", float: "a number"}


class Request:
    """Base of the frozen request dataclasses: validation, argv and argparse from the fields' Flags."""

    command: ClassVar[str] = ""  # the subcommand (`stylebatch <command>`); "" for an option group
    summary: ClassVar[str] = ""  # one line of `stylebatch --help`
    module: ClassVar[str] = ""  # the handler's module (stylebatch.<module>), when not named as the command

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # in the class's own namespace before @dataclass runs, so that it keeps this repr: a SAS in a
        # place never shows in a log line or traceback that prints a request
        super().__init_subclass__(**kwargs)
        cls.__repr__ = Request.__repr__  # type: ignore[method-assign]

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={_shown(getattr(self, f.name))!r}" if "flag" in f.metadata
                          else f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))  # type: ignore[arg-type]
        return f"{type(self).__qualname__}({shown})"

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]  # what the caller means, as the one request it means
            meta, value = f.metadata.get("flag"), getattr(self, f.name)
            if meta is None:
                continue
            if isinstance(value, bool) or type(value) is meta.kind:
                continue
            if meta.kind is float and isinstance(value, numbers.Real):  # 1 where 1.0 is meant; numpy's numbers
                object.__setattr__(self, f.name, float(value))
            elif meta.kind is int and isinstance(value, numbers.Integral):  # numpy's int64 (max_side=np.max(...))
                object.__setattr__(self, f.name, int(value))
            elif meta.kind is str and isinstance(value, os.PathLike):  # a pathlib.Path for a place
                object.__setattr__(self, f.name, os.fspath(value))
            elif meta.many and isinstance(value, list):  # a list: frozen and hashable as a tuple
                object.__setattr__(self, f.name, tuple(os.fspath(v) if isinstance(v, os.PathLike) else v
                                                       for v in value))

    def validate(self):
        """Self, or BadInput naming the first bad field. Checks what needs no files, no network."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if "group" in f.metadata:
                if not isinstance(value, f.default_factory):  # type: ignore[arg-type]
                    raise BadInput(f"{f.name} must be {f.default_factory.__name__}(...), not "  # type: ignore[union-attr]
                                   f"{type(value).__name__}")
                value.validate()
                continue
            meta: Flag = f.metadata["flag"]
            if value is None or value is False or (meta.many and value == ()):
                if meta.required:
                    raise BadInput(f"{meta.name} is required")
                continue
            if meta.many and not isinstance(value, tuple):
                raise BadInput(f"bad {meta.name} {value!r}: must be a tuple of values")
            for item in value if meta.many else (value,):
                if meta.choices and item not in meta.choices:  # of any type (temporal=True): name the choices
                    problem = f"must be one of {', '.join(meta.choices)}"
                else:
                    problem = _type_problem(meta, item) or (meta.check(item) if meta.check else None)
                if problem:
                    raise BadInput(f"bad {meta.name} {item!r}: {problem}")
        given: dict[str, str] = {}
        for f in fields(self):  # type: ignore[arg-type]
            meta = f.metadata.get("flag")
            if meta is not None and meta.exclusive and getattr(self, f.name) not in (None, False):
                if meta.exclusive in given:
                    raise BadInput(f"{given[meta.exclusive]} and {meta.name} exclude each other: give one")
                given[meta.exclusive] = meta.name
        self.check()
        return self

    def check(self) -> None:
        """Rules across fields, for subclasses."""

    def to_argv(self) -> list[str]:
        """The command line that parses back to this request: [command, args...]."""
        options_: list[str] = []
        positional: list[str] = []
        for f, meta in _flags(type(self), self):
            value = f.value
            if value is None or value is False:
                continue
            if meta.kind is bool:
                options_.append(meta.flags[-1])
            elif not meta.flags:
                positional.append(_text(value))
            else:
                for item in value if meta.many else (value,):
                    text = _text(item)
                    options_ += [f"{meta.flags[-1]}={text}"] if text.startswith("-") else [meta.flags[0], text]
        head = [self.command] if self.command else []
        if any(p.startswith("-") for p in positional):  # would read as a flag: after "--", at the end
            return [*head, *options_, "--", *positional]
        return [*head, *positional, *options_]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
        """This request's flags on `parser` (`only`: just these fields): option groups as argparse groups."""
        exclusive: dict[tuple[int, str], Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if only is not None and f.name not in only:
                continue
            if "group" in f.metadata:
                group = parser.add_argument_group(f.metadata["group"])
                _add(group, f.default_factory, exclusive)  # type: ignore[misc]
            else:
                _add_one(parser, f, exclusive)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace):
        """The request argparse parsed (unvalidated: call validate())."""
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if "group" in f.metadata:
                kwargs[f.name] = f.default_factory.from_namespace(ns)  # type: ignore[misc, union-attr]
            else:
                value = getattr(ns, f.name)
                kwargs[f.name] = tuple(value or ()) if f.metadata["flag"].many else value
        return cls(**kwargs)

    @classmethod
    def from_argv(cls, argv: list[str]):
        """The validated request `argv` (as to_argv() makes it, command first) stands for."""
        parser = ArgParser(prog=f"stylebatch {cls.command}", add_help=False)  # help is the CLI's, never an exit here
        cls.add_arguments(parser)
        if not argv or argv[0] != cls.command:
            raise BadInput(f"not a `stylebatch {cls.command}` command line: {' '.join(argv[:1])}")
        flags = argv[1:argv.index("--")] if "--" in argv else argv[1:]  # after "--", `-h` is a file's name
        if asked := sorted({"-h", "--help"} & set(flags)):
            raise BadInput(f"{asked[0]} asks for the usage, which makes no request: run `{parser.prog} --help`")
        return cls.from_namespace(parser.parse_args(argv[1:])).validate()


class ArgParser(argparse.ArgumentParser):
    """Bad flags end like every other error: BadInput (one `stylebatch: error:` line, exit 2), pointing
    at the help of the (sub)command that was given. A flag is only ever its whole name: no abbreviations
    (`--max` for `--max-side`), so that a flag added later never changes what an existing script means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._given: list[str] = []

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = [str(a) for a in (sys.argv[1:] if args is None else args)]  # for error()'s hints
        return super().parse_known_args(args, namespace)

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but arguments nothing took are blamed on the subcommand given (its --help
        lists what it takes), not on the whole program."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            _innermost(self, ns).error(f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{' '.join(message.split())}{self._dash_hint(message)} (see `{self.prog} --help`)")

    def _dash_hint(self, message: str) -> str:
        """A positional argument missing where a word given starts with "-" (a file `-take2.mov`, read
        as a flag): how to give it."""
        head = "the following arguments are required: "
        if m := re.fullmatch(r"argument (\S+): expected one argument", message):  # -o -take3.mp4
            flags = m.group(1).split("/")
            for flag, word in zip(self._given, self._given[1:]):
                if flag in flags and word.startswith("-") and word not in self._option_string_actions:
                    return f"; {word} was read as a flag: write {flag}={word}, or {flag} ./{word}"
            return ""
        positionals = [a for a in self._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
        if not message.startswith(head) or not positionals or all(
                name.startswith("-") for name in message[len(head):].split(", ")):
            return ""  # no positional missing (only a flag such as -o), or the command itself (`stylebatch -x`)
        dashed = [w for w in self._given if w.startswith("-") and w != "--" and w.split("=", 1)[0]
                  not in self._option_string_actions and not self._negative_number_matcher.match(w)]
        if not dashed:
            return ""
        return f"; {dashed[0]} was read as a flag: for a file of that name write ./{dashed[0]}, or put it after --"


def _innermost(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the subcommand `ns` was parsed with (`stylebatch run`), or `parser` itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(ns, action.dest, None))
            if chosen is not None:
                return _innermost(chosen, ns)
    return parser


@dataclass
class _Bound:
    value: Any


def _flags(cls: type, obj: Any = None):
    """(field, Flag) of every flag of `cls`, option groups flattened; with `obj`, field is _Bound(value)."""
    for f in fields(cls):
        if "group" in f.metadata:
            yield from _flags(f.default_factory, getattr(obj, f.name) if obj is not None else None)  # type: ignore[arg-type]
        else:
            yield (f if obj is None else _Bound(getattr(obj, f.name))), f.metadata["flag"]


def _add(parser: Any, cls: type, exclusive: dict) -> None:
    for f in fields(cls):
        _add_one(parser, f, exclusive)


def _add_one(parser: Any, f: dataclasses.Field, exclusive: dict) -> None:
    meta: Flag = f.metadata["flag"]
    target = parser
    if meta.exclusive:
        key = (id(parser), meta.exclusive)
        if key not in exclusive:
            exclusive[key] = parser.add_mutually_exclusive_group()
        target = exclusive[key]
    if not meta.flags:
        target.add_argument(f.name, help=meta.help, metavar=meta.metavar or f.name.upper())
        return
    kwargs: dict[str, Any] = {"dest": f.name, "help": meta.help, "default": None if meta.many else f.default}
    if meta.kind is bool:
        kwargs["action"] = "store_true"
    else:
        kwargs.update(type=converter(meta.kind, meta.check), choices=meta.choices, required=meta.required, metavar=meta.metavar)
        if meta.many:
            kwargs["action"] = "append"
    target.add_argument(*meta.flags, **kwargs)


def converter(kind: type, check: Check | None = None) -> Callable[[str], Any] | None:
    """An argparse `type=` reading `kind` and applying `check` (None: a plain string)."""
    if kind is str and check is None:
        return None

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {_KIND_WORDS.get(kind, 'valid')}") from None
        problem = check(value) if check else None
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} {problem}")
        return value

    return convert


def _type_problem(meta: Flag, value: Any) -> str | None:
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str)}[meta.kind](value)
    return None if ok else f"must be {_KIND_WORDS.get(meta.kind, 'a ' + meta.kind.__name__)}"


def _shown(value: Any) -> Any:
    """A field's value as repr() shows it: a URI's query (a SAS) left out."""
    if isinstance(value, tuple):
        return tuple(_shown(v) for v in value)
    if isinstance(value, str) and "://" in value and "?" in value:
        return value.split("?", 1)[0] + "?<query hidden>"
    return value


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

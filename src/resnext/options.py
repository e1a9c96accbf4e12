"""Declared-once options: each `resnext train` flag is one dataclass field of `TrainConfig` (recipe.py) carrying an
`Option` in its metadata (spellings, type, range or choices, help, NVIDIA's meaning, ours). From that one
declaration come the argparse parser, the dataclass default, the checks of `TrainConfig.validate()`, the
"ignored here" warnings and the table of docs/nvidia.md (scripts/write_nvidia_doc.py writes it).

Importing this module never imports torch: the CLI builds its parser before anything heavy loads.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

# NVIDIA's main.py parses these with argparse's type=bool, which reads any non-empty text as True.
TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


@dataclass(frozen=True)
class Option:
    """One flag of `resnext train`.

    kind: "value" (FLAG VALUE), "flag" (store_true), "negated" (store_false, e.g. --no-checkpoints), "toggle"
        (--x / --no-x), "bool-value" (NVIDIA's `--last_bn_0_init True|False`; a bare flag means True) or
        "positional".
    type: int, float or str: the value's type (argparse converts with it, validate() checks Python values).
    choices / low, high (inclusive unless low_open / high_open) / special (values allowed outside the range,
        such as -1 for "off"): the valid values; `none` allows None (meaning given in `help`).
    nvidia: NVIDIA main.py's default and meaning ("" when NVIDIA's scripts have no such flag).
    ours: how `resnext train` differs from NVIDIA ("" when it does exactly what NVIDIA's does).
    opt_in: our own behaviour where it differs and is better, and the flag or value that asks for it.
    nvidia_parser: "main" or "model": which of NVIDIA's two parsers owns the flag (abbreviations resolve per
        parser there, see expand_nvidia_abbreviations); None when NVIDIA has no such flag.
    aliases: spellings that are ours only (e.g. --num-classes beside NVIDIA's --num_classes).
    ignored: config -> why this option has no effect in that configuration, or None (checked only when the
        value differs from the default, and reported as a one-line warning).
    """

    flags: tuple[str, ...]
    help: str
    group: str
    kind: str = "value"
    type: type | None = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple = ()
    none: bool = False
    metavar: str | None = None
    nvidia: str = ""
    ours: str = ""
    opt_in: str = ""
    nvidia_parser: str | None = "main"
    aliases: tuple[str, ...] = ()
    ignored: Callable[[Any], str | None] | None = None

    @property
    def name(self) -> str:
        """The main spelling (what messages and docs show): the first long one."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0])

    @property
    def all_flags(self) -> tuple[str, ...]:
        return self.flags + self.aliases

    def check(self, value: Any) -> str | None:
        """Why `value` is not valid for this option (one clause naming the flag), or None when it is."""
        label = self.name if self.kind != "positional" else self.flags[0].upper()
        if value is None:
            return None if self.none or self.kind in ("toggle",) else f"{label} needs a value"
        if self.kind in ("flag", "negated", "toggle", "bool-value"):
            return None if isinstance(value, bool) else f"{label} must be True or False, got {value!r}"
        if self.choices is not None:
            if value in self.choices:
                return None
            return f"{label} must be one of {', '.join(str(c) for c in self.choices)}, got '{value}'"
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{label} must be a number, got {value!r}"
            if self.type is int and not float(value).is_integer():
                return f"{label} must be a whole number, got {value}"
            if not math.isfinite(value):
                return f"{label} must be a finite number, got {value}"
            if value in self.special:
                return None
            too_low = self.low is not None and (value < self.low or (self.low_open and value == self.low))
            too_high = self.high is not None and (value > self.high or (self.high_open and value == self.high))
            if too_low or too_high:
                return f"{label} {self.range_text()}, got {value:g}"
        return None

    def range_text(self) -> str:
        """'must be ...' for the valid range, e.g. 'must be at least 1' or 'must be in [0, 1)'."""
        extra = " or " + " or ".join(str(s) for s in self.special) if self.special else ""
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must be in {left}{self.low:g}, {self.high:g}{right}{extra}"
        if self.low is not None:
            word = "above" if self.low_open else "at least"
            return f"must be {word} {self.low:g}{extra}"
        if self.high is not None:
            return f"must be {'below' if self.high_open else 'at most'} {self.high:g}{extra}"
        return "is out of range"

    def convert(self, text: str) -> Any:
        """argparse's type function: text -> value, with the same checks as validate()."""
        if self.kind == "bool-value":
            value = parse_bool(text)
            if not value:
                logging.getLogger("resnext").warning(
                    f"warning: {self.name} {text} is read as False here; NVIDIA's main.py reads any non-empty value "
                    "(argparse type=bool) as True.")
            return value
        if self.type is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        elif self.type is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        else:
            value = text
        problem = self.check(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem.removeprefix(self.name + " "))
        return value


def parse_bool(text: str) -> bool:
    """True/False for NVIDIA's `--flag True|False` options (any case; also 1/0, yes/no)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'")


def option(default: Any, *flags: str, **details: Any) -> Any:
    """A dataclass field declared as a command-line option (see Option for `details`)."""
    return dataclasses.field(default=default, metadata={"option": Option(flags=flags, **details)})


def options_of(config_class) -> list[tuple[dataclasses.Field, Option]]:
    """(field, Option) of every declared option of a config dataclass, in declaration order."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(config_class) if "option" in f.metadata]


# ---- argparse --------------------------------------------------------------------------------------------

def add_to_parser(parser: argparse.ArgumentParser, config_class) -> None:
    """Add every declared option of `config_class` to `parser`, in groups, with the dataclass defaults."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for field, opt in options_of(config_class):
        if opt.kind == "positional":
            parser.add_argument(field.name, nargs="?", metavar=opt.metavar or field.name.upper(), help=opt.help,
                                default=field.default)
            continue
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        group = groups[opt.group]
        common = dict(dest=field.name, default=field.default, help=_help(field, opt))
        if opt.kind == "flag":
            group.add_argument(*opt.all_flags, action="store_true", **common)
        elif opt.kind == "negated":
            group.add_argument(*opt.all_flags, action="store_false", **common)
        elif opt.kind == "toggle":
            group.add_argument(*opt.all_flags, action=argparse.BooleanOptionalAction, **common)
        elif opt.kind == "bool-value":
            group.add_argument(*opt.all_flags, nargs="?", const=True, type=opt.convert, metavar="True|False",
                               **common)
        else:
            metavar = opt.metavar or ("{" + ",".join(str(c) for c in opt.choices) + "}" if opt.choices else None)
            group.add_argument(*opt.all_flags, type=opt.convert, metavar=metavar, **common)


def _help(field: dataclasses.Field, opt: Option) -> str:
    text = opt.help
    if field.default is not None and opt.kind in ("value",) and "default" not in text:
        text += f" (default: {field.default})"
    return text.replace("%", "%%")


def nvidia_flags(config_class, parser_name: str) -> list[tuple[str, str]]:
    """(NVIDIA's spelling, our dest) of the flags of one of NVIDIA's parsers ("main" or "model")."""
    found = []
    for field, opt in options_of(config_class):
        if opt.nvidia_parser == parser_name:
            found += [(flag, field.name) for flag in opt.flags if flag.startswith("--")]
    return found


def expand_nvidia_abbreviations(argv: list[str], config_class, known: set[str]) -> list[str]:
    """Spell out the abbreviations NVIDIA's parsers accept (`--mom` for --momentum), so that a prefix unique among
    NVIDIA's flags keeps its meaning even where our extra flags would make it ambiguous (`--checkpoint`).

    NVIDIA resolves a prefix in main.py's parser first, then in the model's parser with what is left, so the same
    order decides here. Tokens that are whole flags of ours (`known`) are left alone.
    """
    parsers = [nvidia_flags(config_class, "main"), nvidia_flags(config_class, "model")]
    result = []
    for token in argv:
        if token == "--":
            result += argv[len(result):]
            break
        if token.startswith("--") and len(token) > 2:
            name, sep, value = token.partition("=")
            if name not in known:
                for flags in parsers:
                    matches = {flag for flag, _ in flags if flag.startswith(name)}
                    if len(matches) == 1:
                        token = matches.pop() + sep + value
                        break
                    if matches:
                        break  # ambiguous for NVIDIA too: argparse reports it
        result.append(token)
    return result


# ---- validation and notices ----------------------------------------------------------------------------

def check_values(config) -> list[str]:
    """One message per option whose value is not valid (type, range or choice)."""
    problems = []
    for field, opt in options_of(type(config)):
        problem = opt.check(getattr(config, field.name))
        if problem is not None:
            problems.append(problem)
    return problems


def ignored_options(config, baseline: dict | None = None) -> list[str]:
    """One line per option set to a value other than its default (or its `baseline`, e.g. a preset's) that has no
    effect in this configuration."""
    lines = []
    baseline = baseline or {}
    for field, opt in options_of(type(config)):
        value = getattr(config, field.name)
        if opt.ignored is None or value == field.default or (field.name in baseline and value == baseline[field.name]):
            continue
        reason = opt.ignored(config)
        if reason:
            lines.append(f"warning: {opt.name} is ignored {reason}.")
    return lines


# ---- docs/nvidia.md --------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "same"


def _default_text(field: dataclasses.Field, opt: Option) -> str:
    if opt.kind == "positional":
        return "required"
    value = field.default
    if opt.kind in ("flag", "toggle", "negated") and isinstance(value, bool):
        return {True: "on", False: "off"}[value] if opt.kind != "negated" else ("off" if value else "on")
    return "none" if value is None else f"`{value}`"


def nvidia_table(config_class, extra_rows: list[tuple[str, str, str, str]] = ()) -> str:
    """The Markdown table of docs/nvidia.md: every flag, NVIDIA's meaning, ours, and our opt-in."""
    lines = ["| flag | NVIDIA's main.py | resnext train | our opt-in |", "|---|---|---|---|"]
    for field, opt in options_of(config_class):
        spellings = ", ".join(f"`{f}`" for f in opt.all_flags) if opt.kind != "positional" else "`DATA` (positional)"
        nvidia = opt.nvidia or "no such flag"
        ours = f"default {_default_text(field, opt)}: " + (opt.ours or "as NVIDIA's")
        if not opt.nvidia or opt.nvidia_parser is None:  # a flag of ours: its help says what it does
            ours = f"default {_default_text(field, opt)}: {opt.help}"
        lines.append(f"| {spellings} | {_cell(nvidia)} | {_cell(ours)} | {_cell(opt.opt_in) if opt.opt_in else ''} |")
    for row in extra_rows:
        lines.append("| " + " | ".join(_cell(cell) if cell else "" for cell in row) + " |")
    return "\n".join(lines) + "\n"

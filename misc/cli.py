"""Command-line value types shared by run_sample.py and the scripts: every numeric flag is checked when it is
parsed, so a bad value ends in one argparse line naming the flag, never in a traceback from deep inside a step."""
import argparse
import re


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's example commands as written and shows every default next to its help (unless the
    help already says where the default comes from)."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (the usage of a hundred flags would bury the message)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def str2bool(v):
    if isinstance(v, bool):
        return v
    if v.lower() in ("true", "1", "yes", "y", "on"):
        return True
    if v.lower() in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def int_at_least(minimum):
    def parse(v):
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {n}")
        return n
    parse.__name__ = f"integer >= {minimum}"
    return parse


def int_multiple_of(step, minimum):
    """An integer >= minimum that is a multiple of `step` (a crop that a stride-`step` network maps exactly)."""
    at_least = int_at_least(minimum)

    def parse(v):
        n = at_least(v)
        if n % step:
            raise argparse.ArgumentTypeError(f"must be a multiple of {step}, got {n}")
        return n
    parse.__name__ = f"multiple of {step} >= {minimum}"
    return parse


def pad_size(v):
    """'crop' (pad to the IRNet training crop) or an integer >= 0 (0 = no padding)."""
    if str(v) == "crop":
        return "crop"
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'crop' or an integer >= 0, got {v!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 'crop' or an integer >= 0, got {n}")
    return n


def float_in(low=None, high=None, low_open=False, high_open=False):
    """A float within [low, high] (or open at either end)."""
    lo_sign, hi_sign = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"{lo_sign}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi_sign}"

    def parse(v):
        try:
            x = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {v!r}") from None
        if x != x or (low is not None and (x < low or (low_open and x == low))) or \
                (high is not None and (x > high or (high_open and x == high))):
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {v}")
        return x
    parse.__name__ = f"number in {span}"
    return parse


def float_tuple(v):
    """'1.0,0.5' -> (1.0, 0.5); an empty string gives ()."""
    try:
        return tuple(float(x) for x in str(v).split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {v!r}") from None


def scale_list(v):
    """Non-empty comma-separated positive scales, e.g. 1.0,0.5,1.5,2.0."""
    scales = float_tuple(v)
    if not scales:
        raise argparse.ArgumentTypeError("needs at least one scale, e.g. 1.0,0.5,1.5,2.0")
    if any(not s > 0 or s > 16 for s in scales):
        raise argparse.ArgumentTypeError(f"scales must lie in (0, 16], got {v!r}")
    return scales


def int_range(v):
    """'320,640' -> (320, 640): two positive integers, low <= high."""
    values = float_tuple(v)
    if len(values) != 2 or any(x != int(x) or x < 1 for x in values) or values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"expected two positive integers low,high with low <= high, got {v!r}")
    return int(values[0]), int(values[1])


def sweep(v):
    """'start,stop,step' of a threshold sweep (stop included): three numbers in [0, 1], start <= stop, step > 0."""
    values = float_tuple(v)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected start,stop,step (three numbers), got {v!r}")
    start, stop, step = values
    if not step > 0:
        raise argparse.ArgumentTypeError(f"the step must be > 0, got {step}")
    if start > stop or start < 0 or stop > 1:
        raise argparse.ArgumentTypeError(f"need 0 <= start <= stop <= 1, got {start},{stop}")
    return values


def sweep_values(start, stop, step):
    """The thresholds of a sweep, stop included (rounded so that 0.2 + 3 * 0.01 prints as 0.23)."""
    count = int(round((stop - start) / step)) + 1
    return [round(start + i * step, 6) for i in range(count) if start + i * step <= stop + 1e-9]


_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|auto)$")


def device_name(v):
    if not _DEVICE.match(v):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {v!r}")
    return v


def name_list(choices):
    """Comma-separated names, each one of `choices` (e.g. the steps of --only)."""
    def parse(v):
        names = tuple(n.strip() for n in str(v).split(",") if n.strip())
        if not names:  # an empty value must not mean "no restriction" (--only "" would run every step)
            raise argparse.ArgumentTypeError(f"needs at least one name, e.g. {','.join(choices[:2])}; choose from "
                                             f"{', '.join(choices)}")
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown name(s) {', '.join(unknown)}; choose from "
                                             f"{', '.join(choices)}")
        return names
    parse.__name__ = "names"
    return parse


def show_all_defaults(parser):
    """argparse prints a default only next to help text: give every flag some."""
    for action in parser._actions:
        if action.help is None:
            action.help = " "

"""Unit conversion with exact factors (Fraction): length, mass, temperature, volume, time and data
size. Factors are the legal definitions (1 in = 0.0254 m, 1 lb = 0.45359237 kg, 1 US gal =
231 in³ = 3.785411784 L, 1 year = 365.25 days, the Julian year); temperatures are affine.

Unit names are matched exactly first (data units are case-sensitive: MB is a megabyte, Mb a
megabit), then case-insensitively when that leaves one unit; an unknown or ambiguous unit is an
error that names it and lists what is known."""
from __future__ import annotations

import json
from decimal import Decimal, localcontext
from fractions import Fraction

from .base import Tool, ToolContext, ToolError

F = Fraction
INCH = F("0.0254")
POUND = F("0.45359237")
LITRE = F(1, 1000)
US_GALLON = 231 * INCH ** 3
DAY = F(86400)

# category -> {unit: (factor to the category's base unit, aliases)}
UNITS: dict[str, dict[str, tuple[Fraction, tuple[str, ...]]]] = {
    "length": {  # metre
        "m": (F(1), ("meter", "meters", "metre", "metres", "米")),
        "km": (F(1000), ("kilometer", "kilometers", "kilometre", "kilometres", "公里", "千米")),
        "cm": (F(1, 100), ("centimeter", "centimeters", "centimetre", "centimetres", "厘米")),
        "mm": (F(1, 1000), ("millimeter", "millimeters", "millimetre", "millimetres", "毫米")),
        "um": (F(1, 10**6), ("µm", "μm", "micrometer", "micrometers", "micron", "microns")),
        "nm": (F(1, 10**9), ("nanometer", "nanometers", "nanometre", "nanometres")),
        "in": (INCH, ("inch", "inches", '"')),
        "ft": (12 * INCH, ("foot", "feet", "'")),
        "yd": (36 * INCH, ("yard", "yards")),
        "mi": (63360 * INCH, ("mile", "miles")),
        "nmi": (F(1852), ("nautical mile", "nautical miles")),
    },
    "mass": {  # kilogram
        "kg": (F(1), ("kilogram", "kilograms", "kilo", "kilos", "千克", "公斤")),
        "g": (F(1, 1000), ("gram", "grams", "克")),
        "mg": (F(1, 10**6), ("milligram", "milligrams", "毫克")),
        "ug": (F(1, 10**9), ("µg", "μg", "microgram", "micrograms")),
        "t": (F(1000), ("tonne", "tonnes", "metric ton", "metric tons", "吨")),
        "lb": (POUND, ("lbs", "pound", "pounds")),
        "oz": (POUND / 16, ("ounce", "ounces")),
        "st": (14 * POUND, ("stone", "stones")),
        "jin": (F(1, 2), ("斤",)),
    },
    "volume": {  # cubic metre
        "m3": (F(1), ("m³", "cubic meter", "cubic meters", "cubic metre", "cubic metres")),
        "l": (LITRE, ("L", "liter", "liters", "litre", "litres", "升")),
        "ml": (LITRE / 1000, ("mL", "milliliter", "milliliters", "millilitre", "millilitres", "cm3", "cm³", "cc",
                              "毫升")),
        "cl": (LITRE / 100, ("cL", "centiliter", "centiliters", "centilitre", "centilitres")),
        "dl": (LITRE / 10, ("dL", "deciliter", "deciliters", "decilitre", "decilitres")),
        "gal": (US_GALLON, ("gallon", "gallons", "us gallon", "us gallons")),
        "qt": (US_GALLON / 4, ("quart", "quarts")),
        "pt": (US_GALLON / 8, ("pint", "pints")),
        "cup": (US_GALLON / 16, ("cups",)),
        "fl oz": (US_GALLON / 128, ("floz", "fl_oz", "fluid ounce", "fluid ounces")),
        "tbsp": (US_GALLON / 256, ("tablespoon", "tablespoons")),
        "tsp": (US_GALLON / 768, ("teaspoon", "teaspoons")),
        "imp gal": (F("4.54609") * LITRE, ("imp_gal", "imperial gallon", "imperial gallons")),
    },
    "time": {  # second
        "s": (F(1), ("sec", "secs", "second", "seconds", "秒")),
        "ms": (F(1, 1000), ("millisecond", "milliseconds", "毫秒")),
        "us": (F(1, 10**6), ("µs", "μs", "microsecond", "microseconds")),
        "ns": (F(1, 10**9), ("nanosecond", "nanoseconds")),
        "min": (F(60), ("mins", "minute", "minutes", "分钟")),
        "h": (F(3600), ("hr", "hrs", "hour", "hours", "小时")),
        "day": (DAY, ("d", "days", "天")),
        "week": (7 * DAY, ("wk", "weeks", "周")),
        "year": (F("365.25") * DAY, ("yr", "years", "a", "年")),
    },
    "data size": {  # bit
        "bit": (F(1), ("bits", "b")),
        "B": (F(8), ("byte", "bytes")),
        "kB": (F(8 * 10**3), ("KB", "kilobyte", "kilobytes")),
        "MB": (F(8 * 10**6), ("megabyte", "megabytes")),
        "GB": (F(8 * 10**9), ("gigabyte", "gigabytes")),
        "TB": (F(8 * 10**12), ("terabyte", "terabytes")),
        "PB": (F(8 * 10**15), ("petabyte", "petabytes")),
        "KiB": (F(8 * 2**10), ("kibibyte", "kibibytes")),
        "MiB": (F(8 * 2**20), ("mebibyte", "mebibytes")),
        "GiB": (F(8 * 2**30), ("gibibyte", "gibibytes")),
        "TiB": (F(8 * 2**40), ("tebibyte", "tebibytes")),
        "PiB": (F(8 * 2**50), ("pebibyte", "pebibytes")),
        "kbit": (F(10**3), ("Kb", "kilobit", "kilobits")),
        "Mbit": (F(10**6), ("Mb", "megabit", "megabits")),
        "Gbit": (F(10**9), ("Gb", "gigabit", "gigabits")),
        "Tbit": (F(10**12), ("Tb", "terabit", "terabits")),
    },
}
# Temperatures: (scale, offset) with kelvin = (value + offset) * scale.
TEMPERATURES: dict[str, tuple[Fraction, Fraction, tuple[str, ...]]] = {
    "K": (F(1), F(0), ("kelvin", "kelvins")),
    "C": (F(1), F("273.15"), ("°C", "℃", "celsius", "centigrade", "摄氏度")),
    "F": (F(5, 9), F("459.67"), ("°F", "℉", "fahrenheit", "华氏度")),
    "R": (F(5, 9), F(0), ("°R", "rankine")),
}
MAX_VALUE = 10**18
SIGNIFICANT = 12  # digits of an inexact result


def _build_aliases() -> tuple[dict[str, tuple[str, str]], dict[str, set[tuple[str, str]]]]:
    exact: dict[str, tuple[str, str]] = {}
    folded: dict[str, set[tuple[str, str]]] = {}
    entries = [(category, unit, aliases) for category, table in UNITS.items() for unit, (_, aliases) in table.items()]
    entries += [("temperature", unit, aliases) for unit, (_, _, aliases) in TEMPERATURES.items()]
    for category, unit, aliases in entries:
        for name in (unit, *aliases):
            exact[name] = (category, unit)
            folded.setdefault(name.lower(), set()).add((category, unit))
    return exact, folded


_EXACT, _FOLDED = _build_aliases()


def known_units(category: str) -> list[str]:
    return list(TEMPERATURES) if category == "temperature" else list(UNITS[category])


def lookup(name: str) -> tuple[str, str]:
    """(category, canonical unit) for a unit name; ToolError naming it when unknown or ambiguous."""
    cleaned = " ".join(name.strip().split())
    if cleaned in _EXACT:
        return _EXACT[cleaned]
    matches = _FOLDED.get(cleaned.lower(), set())
    if len(matches) == 1:
        return next(iter(matches))
    if matches:
        options = " or ".join(sorted(unit for _, unit in matches))
        raise ToolError(f"the unit {name!r} is ambiguous: write {options} (case matters for data sizes)")
    listing = "; ".join(f"{category}: {', '.join(known_units(category))}" for category in [*UNITS, "temperature"])
    raise ToolError(f"unknown unit {name!r}. Known units — {listing}")


def convert(value: Fraction, source: str, target: str) -> tuple[Fraction, str, str]:
    """`value` in unit `source` expressed in unit `target`: (result, canonical source, canonical target)."""
    (from_category, from_unit), (to_category, to_unit) = lookup(source), lookup(target)
    if from_category != to_category:
        raise ToolError(f"cannot convert {from_category} ({from_unit}) to {to_category} ({to_unit})")
    if from_category == "temperature":
        scale, offset, _ = TEMPERATURES[from_unit]
        kelvin = (value + offset) * scale
        if kelvin < 0:
            raise ToolError(f"{format_number(value)[0]} {from_unit} is below absolute zero")
        scale, offset, _ = TEMPERATURES[to_unit]
        return kelvin / scale - offset, from_unit, to_unit
    table = UNITS[from_category]
    return value * table[from_unit][0] / table[to_unit][0], from_unit, to_unit


def format_number(value: Fraction) -> tuple[str, bool]:
    """(decimal text, exact?): exact when the fraction terminates within 20 significant digits,
    else rounded to SIGNIFICANT digits."""
    with localcontext() as context:
        context.prec = 40
        decimal = Decimal(value.numerator) / Decimal(value.denominator)
        exact = Fraction(decimal) == value and len(decimal.normalize().as_tuple().digits) <= 20
        if not exact:
            context.prec = SIGNIFICANT
            decimal = +decimal
        text = format(decimal.normalize(), "f")
    return (text if text not in ("-0", "") else "0"), exact


PARAMETERS = {
    "type": "object",
    "properties": {
        "value": {"type": "number", "minimum": -MAX_VALUE, "maximum": MAX_VALUE, "description": "The amount to convert"},
        "from_unit": {"type": "string", "minLength": 1, "maxLength": 40,
                      "description": "Its unit, e.g. \"km\", \"lb\", \"°F\", \"GiB\""},
        "to_unit": {"type": "string", "minLength": 1, "maxLength": 40,
                    "description": "The unit wanted, e.g. \"mi\", \"kg\", \"C\", \"MB\""},
    },
    "required": ["value", "from_unit", "to_unit"],
    "additionalProperties": False,
}


def run_conversion(arguments: dict, context: ToolContext) -> str:
    raw = arguments["value"]
    value = Fraction(raw) if isinstance(raw, int) else Fraction(repr(float(raw)))
    result, source, target = convert(value, arguments["from_unit"], arguments["to_unit"])
    text, exact = format_number(result)
    number = int(text) if exact and result.denominator == 1 else float(text)
    return json.dumps({"result": number, "unit": target, "exact": exact,
                       "text": f"{format_number(value)[0]} {source} {'=' if exact else '≈'} {text} {target}"},
                      ensure_ascii=False)


def unit_converter_tool() -> Tool:
    categories = ", ".join([*UNITS, "temperature"])
    return Tool("unit_converter", f"Convert an amount between units ({categories}) with exact factors", PARAMETERS,
                run_conversion, timeout_s=5.0)

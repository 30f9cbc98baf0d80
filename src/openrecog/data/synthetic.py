"""Synthetic document images rendered with real fonts.

Each class is a document *template* (a fixed layout: title, logo, rules, boxes, table
structure, colours, fonts) and each image is one *instance* of it: the same layout filled
with fresh random contents (names, dates, amounts, line items) and optionally degraded like
a phone photo of a printed page. This gives the demo and the tests realistic open-set
recognition data without downloading anything.

Typical use::

    tpl = make_template(42, seed=0)
    img = render(tpl, random.Random(0), size=384)
    generate_folder("data/synth", num_classes=100, images_per_class=8)
"""

from __future__ import annotations

import colorsys
import csv
import io
import math
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch.utils.data import Dataset

__all__ = [
    "BASE_LONG_SIDE",
    "KINDS",
    "DocumentTemplate",
    "Element",
    "FontSpec",
    "Locale",
    "SyntheticDocumentDataset",
    "find_fonts",
    "generate_folder",
    "make_template",
    "render",
]

Color = tuple[int, int, int]
Box = tuple[int, int, int, int]
FontLike = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Document kinds a template can have.
KINDS: tuple[str, ...] = ("form", "receipt", "letter", "id_card", "invoice")

#: Longer side (px) of the undegraded page; modest so one render stays well under 40 ms.
BASE_LONG_SIDE = 600

_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
# Fonts that cannot render Latin text (or render it as pictures) would make unreadable pages.
_FONT_BLOCKLIST = ("math", "emoji", "symbol", "wingding", "dingbat", "braille", "icon", "awesome")

# --------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------

_COMPANY_WORDS = (
    "NORTHWIND",
    "BLUEPEAK",
    "SILVERLINE",
    "ORION",
    "MERIDIAN",
    "HARBOR",
    "EVERGREEN",
    "SUMMIT",
    "ATLAS",
    "CRESTVIEW",
    "PINNACLE",
    "REDWOOD",
    "IRONBRIDGE",
    "CLEARWATER",
    "GOLDLEAF",
    "STARLING",
    "BRIGHTON",
    "KESTREL",
    "WESTGATE",
    "OAKRIDGE",
    "FALCON",
    "LAKESIDE",
    "SUNRISE",
    "GRANITE",
    "COPPERFIELD",
    "NOVA",
    "POLARIS",
    "AURORA",
    "HIGHLAND",
    "RIVERSTONE",
    "MAPLE",
    "CEDAR",
    "VANGUARD",
    "BEACON",
    "TRIDENT",
    "ZENITH",
    "SEAVIEW",
    "STONEBRIDGE",
    "ASHFORD",
    "LINDEN",
    "HORIZON",
    "CASCADE",
    "ARGENT",
    "QUANTUM",
    "ELMWOOD",
    "FAIRMONT",
    "GREENFIELD",
    "PARAGON",
    "SAPPHIRE",
    "TALLWOOD",
    "BLACKROCK",
    "WILLOWBY",
    "NORDIC",
    "SOLSTICE",
    "HAWTHORN",
    "MIDLAND",
    "PACIFIC",
    "CAMBRIDGE",
    "VERTEX",
    "ALDER",
)
_COMPANY_SUFFIXES = (
    "LOGISTICS",
    "HOLDINGS",
    "MEDICAL",
    "INSURANCE",
    "BANK",
    "TRADING",
    "ENERGY",
    "FREIGHT",
    "PHARMACY",
    "UNIVERSITY",
    "MUNICIPALITY",
    "TELECOM",
    "MOTORS",
    "FOODS",
    "CONSULTING",
    "PROPERTIES",
    "AIRLINES",
    "HEALTHCARE",
    "SECURITIES",
    "SUPPLY CO.",
    "INDUSTRIES",
    "LABORATORIES",
    "PARTNERS",
    "CREDIT UNION",
    "SYSTEMS",
    "MARKETS",
    "TRANSIT AUTHORITY",
    "WATER BOARD",
    "COUNCIL",
    "GROUP",
    "SHIPPING",
    "ARCHITECTS",
    "LAW OFFICES",
    "COLLEGE",
)
_STORE_SUFFIXES = (
    "MARKET",
    "CAFE",
    "PHARMACY",
    "HARDWARE",
    "BAKERY",
    "SUPERSTORE",
    "FUEL",
    "BOOKS",
    "DELI",
    "GROCERY",
    "KITCHEN",
    "OUTLET",
    "BISTRO",
    "GARDEN CENTRE",
    "ELECTRONICS",
    "WINE & SPIRITS",
)
_DOC_TITLES = {
    "form": (
        "CUSTOMS DECLARATION",
        "APPLICATION FORM",
        "CLAIM FORM",
        "REGISTRATION FORM",
        "CHANGE OF ADDRESS",
        "PERMIT APPLICATION",
        "ENROLMENT FORM",
        "TAX RETURN",
        "INCIDENT REPORT",
        "MEMBERSHIP APPLICATION",
        "DIRECT DEBIT MANDATE",
        "PATIENT INTAKE FORM",
        "VEHICLE TRANSFER",
        "REFUND REQUEST",
        "EMPLOYMENT APPLICATION",
        "EXPENSE CLAIM",
        "LEAVE REQUEST",
        "CONSENT FORM",
    ),
    "invoice": (
        "INVOICE",
        "TAX INVOICE",
        "COMMERCIAL INVOICE",
        "PRO FORMA INVOICE",
        "BILL",
        "STATEMENT",
        "CREDIT NOTE",
        "SALES INVOICE",
        "PURCHASE ORDER",
        "QUOTATION",
    ),
    "id_card": (
        "IDENTITY CARD",
        "RESIDENT PERMIT",
        "EMPLOYEE ID",
        "STUDENT CARD",
        "DRIVER LICENCE",
        "MEMBERSHIP CARD",
        "HEALTH INSURANCE CARD",
        "VISITOR PASS",
        "PRESS CARD",
        "ACCESS BADGE",
        "LIBRARY CARD",
        "WORK PERMIT",
    ),
}
_FIRST_NAMES = (
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Daniel",
    "Nancy",
    "Matthew",
    "Lisa",
    "Anthony",
    "Sophie",
    "Mark",
    "Emma",
    "Paul",
    "Olivia",
    "Steven",
    "Hannah",
    "Andrew",
    "Laura",
    "Lucas",
    "Anna",
    "Henrik",
    "Ingrid",
    "Mateo",
    "Lucia",
    "Kenji",
    "Yuki",
    "Amir",
    "Leila",
    "Pieter",
    "Marta",
    "Oliver",
    "Chloe",
    "Noah",
    "Mia",
    "Ethan",
    "Zoe",
    "Felix",
    "Clara",
    "Hugo",
    "Alice",
)
_LAST_NAMES = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Martin",
    "Jackson",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Green",
    "Baker",
    "Adams",
    "Nelson",
    "Hill",
    "Campbell",
    "Mitchell",
    "Roberts",
    "Carter",
    "Phillips",
    "Evans",
    "Turner",
    "Torres",
    "Parker",
    "Collins",
    "Edwards",
    "Stewart",
    "Morris",
    "Nguyen",
    "Murphy",
    "Rivera",
    "Cook",
    "Rogers",
    "Morgan",
    "Peterson",
    "Lindqvist",
    "Schneider",
    "Rossi",
    "Dubois",
    "Kowalski",
    "Tanaka",
    "Novak",
    "Jansen",
)
_STREETS = (
    "Harbour",
    "Station",
    "Church",
    "Victoria",
    "Mill",
    "Park",
    "Queen",
    "King",
    "High",
    "Market",
    "Bridge",
    "Elm",
    "Oak",
    "Maple",
    "Cedar",
    "Lake",
    "Hill",
    "River",
    "Forest",
    "Garden",
    "Meadow",
    "Spring",
    "Sunset",
    "Windsor",
    "Albert",
    "Chestnut",
    "Orchard",
    "Canal",
    "Castle",
    "Abbey",
    "Willow",
    "Granite",
    "Beacon",
    "Ferry",
    "Union",
    "Grove",
)
_STREET_TYPES = ("Street", "Road", "Avenue", "Lane", "Way", "Drive", "Place", "Close", "Court")
_CITIES = (
    "Springfield",
    "Riverton",
    "Lakewood",
    "Fairview",
    "Greenville",
    "Bristol",
    "Portsmouth",
    "Oakland",
    "Kingston",
    "Ashland",
    "Clinton",
    "Milford",
    "Salem",
    "Franklin",
    "Georgetown",
    "Arlington",
    "Dover",
    "Hudson",
    "Madison",
    "Newport",
    "Oxford",
    "Richmond",
    "Winchester",
    "Burlington",
    "Chester",
    "Lexington",
    "Marion",
    "Bedford",
    "Hamilton",
    "Preston",
    "Eastwood",
    "Northfield",
    "Westbury",
    "Southport",
    "Brookside",
    "Harborview",
    "Millbrook",
)
_COUNTRIES = (
    "United Kingdom",
    "Ireland",
    "Canada",
    "Australia",
    "Germany",
    "France",
    "Netherlands",
    "Sweden",
    "Norway",
    "Denmark",
    "Spain",
    "Italy",
    "Portugal",
    "Poland",
    "Austria",
    "Belgium",
    "Finland",
    "Japan",
    "New Zealand",
    "United States",
    "Switzerland",
    "Czechia",
)
_OCCUPATIONS = (
    "Engineer",
    "Teacher",
    "Nurse",
    "Accountant",
    "Designer",
    "Electrician",
    "Chef",
    "Consultant",
    "Pharmacist",
    "Architect",
    "Lawyer",
    "Technician",
    "Analyst",
    "Driver",
    "Manager",
    "Student",
    "Researcher",
    "Plumber",
    "Journalist",
    "Photographer",
    "Retired",
)
_DEPARTMENTS = (
    "Finance",
    "Operations",
    "Human Resources",
    "Logistics",
    "Engineering",
    "Sales",
    "Marketing",
    "Legal",
    "Procurement",
    "Research",
    "Customer Service",
    "IT Services",
)
_JOB_TITLES = (
    "Head of Customer Relations",
    "Accounts Manager",
    "Operations Director",
    "Claims Officer",
    "Senior Case Worker",
    "Managing Director",
    "Office Manager",
    "Compliance Officer",
    "Sales Representative",
    "Registrar",
    "Chief Financial Officer",
)
_ITEM_ADJ = (
    "Standard",
    "Premium",
    "Stainless",
    "Heavy-duty",
    "Compact",
    "Wireless",
    "Annual",
    "Monthly",
    "Organic",
    "Industrial",
    "Galvanised",
    "Recycled",
    "Express",
    "Custom",
    "Replacement",
    "Extended",
    "Portable",
    "Digital",
    "Laminated",
    "Insulated",
)
_ITEM_NOUN = (
    "mounting bracket",
    "cable set",
    "consulting hours",
    "service fee",
    "licence",
    "support plan",
    "steel bolts",
    "pallet wrap",
    "printer toner",
    "office chair",
    "desk lamp",
    "storage boxes",
    "hydraulic pump",
    "filter cartridge",
    "safety gloves",
    "maintenance visit",
    "freight charge",
    "installation",
    "training session",
    "sensor kit",
    "copy paper",
    "hinge assembly",
    "valve",
    "design work",
    "hosting",
    "spare parts",
)
_RECEIPT_ITEMS = (
    "MILK 2L",
    "BREAD WHOLEGRAIN",
    "EGGS FREE RANGE 12",
    "BANANAS",
    "APPLES GALA",
    "CHEDDAR 400G",
    "COFFEE BEANS",
    "ORANGE JUICE",
    "PASTA PENNE",
    "TOMATOES",
    "OLIVE OIL 500ML",
    "CHICKEN BREAST",
    "RICE BASMATI",
    "YOGURT NATURAL",
    "BUTTER",
    "SPARKLING WATER",
    "CHOC BAR",
    "TEA BAGS 80",
    "DISH SOAP",
    "PAPER TOWELS",
    "LATTE",
    "CAPPUCCINO",
    "CROISSANT",
    "SANDWICH",
    "SCREWS M4 X50",
    "BATTERIES AA",
    "TAPE",
    "NEWSPAPER",
    "SHAMPOO",
    "TOOTHPASTE",
    "ONIONS",
    "CARROTS 1KG",
    "LEMONADE",
    "MUFFIN",
    "UNLEADED 95",
    "CAR WASH",
    "PAINT BRUSH",
    "LIGHT BULB",
    "NOTEBOOK A5",
    "PEN BLUE",
)
_WORDS = (
    "the",
    "of",
    "and",
    "to",
    "in",
    "for",
    "with",
    "on",
    "by",
    "from",
    "as",
    "at",
    "this",
    "that",
    "we",
    "you",
    "your",
    "our",
    "will",
    "be",
    "are",
    "is",
    "has",
    "have",
    "been",
    "please",
    "account",
    "payment",
    "request",
    "information",
    "following",
    "regarding",
    "received",
    "application",
    "policy",
    "service",
    "services",
    "contract",
    "period",
    "date",
    "letter",
    "office",
    "customer",
    "details",
    "provide",
    "confirm",
    "review",
    "process",
    "required",
    "additional",
    "documents",
    "further",
    "contact",
    "within",
    "days",
    "should",
    "would",
    "any",
    "questions",
    "team",
    "new",
    "current",
    "annual",
    "report",
    "update",
    "changes",
    "terms",
    "conditions",
    "agreement",
    "records",
    "notice",
    "delivery",
    "order",
    "invoice",
    "balance",
    "amount",
    "outstanding",
    "pleased",
    "inform",
    "decision",
    "meeting",
    "schedule",
    "project",
    "support",
    "renewal",
    "coverage",
    "claim",
    "assessment",
    "approved",
    "pending",
    "enclosed",
    "copy",
    "signed",
    "return",
    "address",
    "registered",
    "reference",
    "number",
    "above",
    "below",
    "under",
    "after",
    "before",
    "their",
    "these",
    "all",
    "may",
    "also",
    "not",
    "if",
    "or",
    "an",
    "a",
    "can",
    "it",
    "us",
    "more",
    "each",
    "other",
    "time",
    "only",
    "such",
    "made",
    "being",
    "office",
)
_SECTION_TITLES = (
    "PERSONAL DETAILS",
    "CONTACT INFORMATION",
    "APPLICANT",
    "PAYMENT DETAILS",
    "SHIPMENT DETAILS",
    "VEHICLE INFORMATION",
    "EMPLOYMENT",
    "CLAIM DETAILS",
    "FOR OFFICIAL USE ONLY",
    "GOODS DESCRIPTION",
    "BANK DETAILS",
    "MEDICAL HISTORY",
    "ADDITIONAL INFORMATION",
    "EMERGENCY CONTACT",
    "PREVIOUS ADDRESS",
    "DEPENDANTS",
)
_FORM_FIELDS = (
    ("Surname", "last_name"),
    ("Given names", "first_name"),
    ("Full name", "name"),
    ("Date of birth", "date"),
    ("Place of birth", "city"),
    ("Nationality", "country"),
    ("Street address", "street"),
    ("City", "city"),
    ("Postal code", "postcode"),
    ("Country", "country"),
    ("Telephone", "phone"),
    ("E-mail", "email"),
    ("Occupation", "occupation"),
    ("Employer", "company"),
    ("Document number", "pattern"),
    ("Reference number", "pattern"),
    ("Date of issue", "date"),
    ("Amount claimed", "amount"),
    ("Account number", "digits"),
    ("Registration no.", "pattern"),
    ("Policy number", "pattern"),
    ("Description", "words"),
    ("Tax ID", "pattern"),
    ("Sex", "sex"),
    ("Department", "department"),
    ("Contact person", "name"),
    ("Mobile", "phone"),
    ("Date of arrival", "date"),
    ("Purpose of visit", "words"),
    ("Declared value", "amount"),
    ("Quantity", "qty"),
    ("Member ID", "pattern"),
    ("Marital status", "marital"),
    ("Start date", "date"),
)
_CHECK_OPTIONS = (
    ("Yes", "No"),
    ("Mr", "Mrs", "Ms", "Dr"),
    ("Single", "Married", "Other"),
    ("Gift", "Sample", "Commercial", "Returned goods"),
    ("Cash", "Card", "Transfer"),
    ("New", "Renewal", "Replacement"),
    ("Full-time", "Part-time", "Contract"),
    ("Air", "Sea", "Road", "Rail"),
    ("Standard", "Express"),
)
_CLOSINGS = ("Yours sincerely,", "Kind regards,", "Best regards,", "Yours faithfully,")
_THANKS = (
    "THANK YOU FOR SHOPPING WITH US",
    "THANK YOU - PLEASE COME AGAIN",
    "KEEP THIS RECEIPT FOR RETURNS",
    "HAVE A NICE DAY!",
    "RETURNS ACCEPTED WITHIN 30 DAYS",
    "THANK YOU FOR YOUR VISIT",
    "CUSTOMER COPY",
)
_DATE_FORMATS = ("%d/%m/%Y", "%m/%d/%Y", "%Y-%m-%d", "%d.%m.%Y", "%d %b %Y", "%b %d, %Y")
_MONEY_FORMATS = ("${}", "£{}", "€{}", "{} €", "CHF {}", "USD {}", "{} kr", "EUR {}", "A${}")


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FontSpec:
    """A font file at a pixel size.

    Attributes:
        path: TrueType/OpenType file, or ``None`` for Pillow's built-in scalable font.
        size: Size in pixels of the base-resolution page.
    """

    path: str | None
    size: int


@lru_cache(maxsize=1)
def _scan_fonts() -> tuple[Path, ...]:
    candidates: set[Path] = set()
    for root in _FONT_DIRS:
        if root.is_dir():
            for pattern in ("*.ttf", "*.otf", "*.TTF", "*.OTF"):
                candidates.update(root.rglob(pattern))
    if shutil.which("fc-list"):
        try:
            out = subprocess.run(
                ["fc-list", "--format", "%{file}\\n"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            p = Path(line.strip())
            if p.suffix.lower() in (".ttf", ".otf") and p.is_file():
                candidates.add(p)
    good = {
        p.resolve() for p in candidates if not any(bad in p.name.lower() for bad in _FONT_BLOCKLIST)
    }
    # Sorting makes templates independent of directory listing order.
    return tuple(sorted(good, key=str))


def find_fonts() -> list[Path]:
    """Find TrueType/OpenType fonts installed on this machine.

    Searches the usual font directories (``/usr/share/fonts`` and friends) and the output of
    ``fc-list`` when available. Symbol, emoji and maths fonts are skipped. The scan is
    cached for the lifetime of the process.

    Returns:
        Sorted, de-duplicated list of font file paths; empty when none are installed.
    """
    return list(_scan_fonts())


@lru_cache(maxsize=512)
def _load_font(path: str | None, size: int) -> FontLike:
    if path is not None:
        try:
            # BASIC layout is several times faster than Raqm and fine for Latin text.
            return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


@lru_cache(maxsize=16384)
def _text_width(font: FontSpec, text: str) -> float:
    return float(_load_font(font.path, font.size).getlength(text))


def _fit(font: FontSpec, text: str, width: float) -> str:
    """Cut ``text`` so that it fits in ``width`` pixels."""
    if width <= 0:
        return ""
    w = _text_width(font, text)
    if w <= width:
        return text
    n = max(0, int(len(text) * width / w))
    while n > 0 and _text_width(font, text[:n]) > width:
        n -= 1
    return text[:n].rstrip()


def _draw_text(
    draw: ImageDraw.ImageDraw,
    x: float,
    y: float,
    text: str,
    font: FontSpec,
    color: Color,
    align: str = "left",
) -> None:
    if not text:
        return
    if align != "left":
        w = _text_width(font, text)
        x -= w if align == "right" else w / 2
    draw.text((x, y), text, font=_load_font(font.path, font.size), fill=color)


def _font_traits(p: Path) -> tuple[bool, bool, bool]:
    """Return (bold, italic, mono) guessed from a font file name."""
    n = p.stem.lower()
    bold = any(k in n for k in ("bold", "black", "heavy", "semibold"))
    italic = any(k in n for k in ("italic", "oblique"))
    mono = any(k in n for k in ("mono", "courier", "consol", "code"))
    return bold, italic, mono


def _pick_fonts(rng: random.Random, fonts: Sequence[Path], kind: str) -> dict[str, str | None]:
    """Choose title/body/value font paths (1-3 distinct files) for one template."""
    if not fonts:
        return {"title": None, "body": None, "value": None}
    traits = {p: _font_traits(p) for p in fonts}
    regular = [
        p for p in fonts if not traits[p][0] and not traits[p][1] and "light" not in p.stem.lower()
    ]
    bold = [p for p in fonts if traits[p][0] and not traits[p][1]]
    mono = [p for p in regular if traits[p][2]]
    proportional = [p for p in regular if not traits[p][2]] or regular or list(fonts)
    if kind == "receipt" and mono and rng.random() < 0.75:
        body = rng.choice(mono)
    else:
        body = rng.choice(proportional)
    n_fonts = rng.choice((1, 2, 2, 3))
    title = body
    if n_fonts >= 2 and bold:
        family = body.stem.split("-")[0]
        same = [p for p in bold if p.stem.split("-")[0] == family]
        title = rng.choice(same) if same and rng.random() < 0.6 else rng.choice(bold)
    value = body
    if n_fonts == 3:
        others = [p for p in (mono or regular) if p not in (body, title)]
        if others:
            value = rng.choice(others)
    return {"title": str(title), "body": str(body), "value": str(value)}


# --------------------------------------------------------------------------------------------
# Random field contents
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Locale:
    """Formatting conventions fixed by a template (they are part of its look).

    Attributes:
        date_format: ``strftime`` pattern for dates.
        money_format: Pattern with one ``{}`` for the number, e.g. ``"${}"`` or ``"{} €"``.
        decimal_comma: Write ``1.234,50`` instead of ``1,234.50``.
        tax_rate: Tax percentage applied to invoice and receipt totals.
    """

    date_format: str
    money_format: str
    decimal_comma: bool
    tax_rate: float


def _fill_pattern(rng: random.Random, fmt: str) -> str:
    """Replace ``#`` by random digits and ``@`` by random capitals; keep other characters."""
    out = []
    for ch in fmt:
        if ch == "#":
            out.append(str(rng.randrange(10)))
        elif ch == "@":
            out.append(chr(65 + rng.randrange(26)))
        else:
            out.append(ch)
    return "".join(out)


def _random_pattern(rng: random.Random) -> str:
    """A template-level identifier format such as ``INV-2024-#####`` or ``@@######``."""
    prefix = rng.choice(
        (
            "",
            "",
            "@@",
            "@",
            "".join(rng.choice("ABCDEFGHKLMNPRSTUVWXZ") for _ in range(rng.randint(2, 3))),
        )
    )
    sep = rng.choice(("-", "/", "", " ", "."))
    body = "#" * rng.randint(4, 8)
    if rng.random() < 0.3:
        body = "#" * rng.randint(2, 4) + sep + body
    suffix = rng.choice(("", "", "", "-@", "/##"))
    return (prefix + sep if prefix else "") + body + suffix


def _money(x: float, loc: Locale) -> str:
    s = f"{x:,.2f}"
    if loc.decimal_comma:
        s = s.replace(",", "\0").replace(".", ",").replace("\0", ".")
    return loc.money_format.format(s)


def _random_date(rng: random.Random, loc: Locale) -> str:
    d = date(2012, 1, 1) + timedelta(days=rng.randrange(5000))
    return d.strftime(loc.date_format)


def _name(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"


def _street(rng: random.Random) -> str:
    return f"{rng.randint(1, 240)} {rng.choice(_STREETS)} {rng.choice(_STREET_TYPES)}"


def _postcode(rng: random.Random) -> str:
    return _fill_pattern(rng, rng.choice(("#####", "@## #@@", "####", "##-###", "@#@ #@#")))


def _city_line(rng: random.Random) -> str:
    return f"{_postcode(rng)} {rng.choice(_CITIES)}"


def _company(rng: random.Random) -> str:
    return f"{rng.choice(_COMPANY_WORDS).title()} {rng.choice(_COMPANY_SUFFIXES).title()}"


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))).capitalize()


def _phone(rng: random.Random) -> str:
    return _fill_pattern(
        rng,
        rng.choice(
            (
                "+44 20 #### ####",
                "(###) ###-####",
                "+49 ### #######",
                "0## ### ## ##",
                "+1 ###-###-####",
                "+31 ## ### ####",
            )
        ),
    )


_VALUE_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "name": _name,
    "first_name": lambda r: r.choice(_FIRST_NAMES),
    "last_name": lambda r: r.choice(_LAST_NAMES),
    "street": _street,
    "city": lambda r: r.choice(_CITIES),
    "city_line": _city_line,
    "postcode": _postcode,
    "country": lambda r: r.choice(_COUNTRIES),
    "phone": _phone,
    "email": lambda r: (
        f"{r.choice(_FIRST_NAMES).lower()}.{r.choice(_LAST_NAMES).lower()}"
        f"@{r.choice(_COMPANY_WORDS).lower()}.{r.choice(('com', 'org', 'net'))}"
    ),
    "company": _company,
    "occupation": lambda r: r.choice(_OCCUPATIONS),
    "department": lambda r: r.choice(_DEPARTMENTS),
    "digits": lambda r: "".join(str(r.randrange(10)) for _ in range(r.randint(8, 12))),
    "words": lambda r: _words(r, 2, 5),
    "sex": lambda r: r.choice(("M", "F")),
    "marital": lambda r: r.choice(("Single", "Married", "Divorced", "Widowed")),
    "qty": lambda r: str(r.randint(1, 60)),
    "time": lambda r: f"{r.randint(7, 22):02d}:{r.randrange(60):02d}",
    "subject": lambda r: "Re: " + _words(r, 3, 7),
    "salutation": lambda r: f"Dear {r.choice(('Mr', 'Ms', 'Mrs', 'Dr'))} {r.choice(_LAST_NAMES)},",
    "address_block": lambda r: "\n".join((_name(r), _street(r), _city_line(r))),
    "company_address": lambda r: "\n".join((_name(r), _company(r), _street(r), _city_line(r))),
    "card": lambda r: (
        f"{r.choice(('VISA', 'MASTERCARD', 'AMEX', 'DEBIT'))} **** {r.randrange(10000):04d}"
    ),
    "item": lambda r: f"{r.choice(_ITEM_ADJ)} {r.choice(_ITEM_NOUN)}",
    "mrz": lambda r: "".join(
        r.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<<<<<<") for _ in range(44)
    ),
    "percent": lambda r: f"{r.choice((0, 5, 7, 10, 20))}%",
}


def _value(kind: str, rng: random.Random, loc: Locale, state: dict[str, float], fmt: str) -> str:
    """Random contents for a field of type ``kind`` (money and dates follow ``loc``)."""
    gen = _VALUE_GENERATORS.get(kind)
    if gen is not None:
        return gen(rng)
    if kind == "date":
        return _random_date(rng, loc)
    if kind == "pattern":
        return _fill_pattern(rng, fmt or "######")
    if kind == "amount":
        return _money(round(rng.uniform(5, 5000), 2), loc)
    if kind == "price":
        return _money(round(rng.uniform(1, 400), 2), loc)
    # Totals reuse the subtotal of the table drawn earlier so the numbers add up.
    sub = state.get("subtotal")
    if sub is None:
        sub = state["subtotal"] = round(rng.uniform(10, 3000), 2)
    tax = round(sub * loc.tax_rate / 100.0, 2)
    if kind == "subtotal":
        return _money(sub, loc)
    if kind == "tax":
        return _money(tax, loc)
    if kind == "shipping":
        state["shipping"] = state.get("shipping", round(rng.choice((0, 4.95, 9.9, 15, 25)), 2))
        return _money(state["shipping"], loc)
    if kind == "total":
        return _money(sub + tax + state.get("shipping", 0.0), loc)
    if kind == "change":
        return _money(round(rng.choice((0.0, 0.0, rng.uniform(0.1, 20))), 2), loc)
    raise ValueError(f"unknown field type {kind!r}")


# --------------------------------------------------------------------------------------------
# Template elements
# --------------------------------------------------------------------------------------------


class _RenderState:
    """Per-render mutable context handed to dynamic elements."""

    __slots__ = ("template", "image", "draw", "rng", "state")

    def __init__(self, template: DocumentTemplate, image: Image.Image, rng: random.Random):
        self.template = template
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.rng = rng
        self.state: dict[str, float] = {}

    def value(self, kind: str, fmt: str = "") -> str:
        return _value(kind, self.rng, self.template.locale, self.state, fmt)


@dataclass(frozen=True)
class Element:
    """Base class of template elements.

    Static parts (boxes, labels, logos) are drawn once per template and cached; dynamic
    parts (field contents, scribbles, barcodes) are drawn on every render.
    """

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        return None

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        return None


@dataclass(frozen=True)
class Rect(Element):
    """A filled and/or outlined (optionally rounded) rectangle."""

    box: Box
    fill: Color | None = None
    outline: Color | None = None
    width: int = 1
    radius: int = 0

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        if self.radius:
            draw.rounded_rectangle(
                self.box, self.radius, fill=self.fill, outline=self.outline, width=self.width
            )
        else:
            draw.rectangle(self.box, fill=self.fill, outline=self.outline, width=self.width)


@dataclass(frozen=True)
class Line(Element):
    """A straight rule, solid or dashed (``dash`` = dash length in px)."""

    start: tuple[int, int]
    end: tuple[int, int]
    color: Color
    width: int = 1
    dash: int = 0

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        if not self.dash:
            draw.line((self.start, self.end), fill=self.color, width=self.width)
            return
        (x0, y0), (x1, y1) = self.start, self.end
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            return
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        t = 0.0
        while t < length:
            t1 = min(t + self.dash, length)
            draw.line(
                ((x0 + ux * t, y0 + uy * t), (x0 + ux * t1, y0 + uy * t1)),
                fill=self.color,
                width=self.width,
            )
            t += 2 * self.dash


@dataclass(frozen=True)
class Text(Element):
    """Fixed text; ``x`` is the left, centre or right edge depending on ``align``."""

    x: float
    y: float
    text: str
    font: FontSpec
    color: Color
    align: str = "left"

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        _draw_text(draw, self.x, self.y, self.text, self.font, self.color, self.align)


@dataclass(frozen=True)
class Field(Element):
    """A box filled with random contents of type ``value`` on every render.

    Attributes:
        box: Area the value must fit in.
        value: Field type, e.g. ``"name"``, ``"date"``, ``"amount"``, ``"pattern"``.
        font: Font of the value.
        color: Ink colour of the value.
        align: ``"left"``, ``"center"`` or ``"right"`` inside the box.
        fmt: Identifier format for ``"pattern"`` fields (``#`` digit, ``@`` letter).
        upper: Write the value in capitals.
        comb: Width of per-character cells (0 = free text), for boxed "comb" fields.
    """

    box: Box
    value: str
    font: FontSpec
    color: Color
    align: str = "left"
    fmt: str = ""
    upper: bool = False
    comb: int = 0

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        text = ctx.value(self.value, self.fmt)
        if self.upper:
            text = text.upper()
        x0, y0, x1, y1 = self.box
        lines = text.split("\n")
        lh = self.font.size * 1.25
        if len(lines) == 1:
            y = (y0 + y1) / 2 - 0.58 * self.font.size
        else:
            y = y0
        if self.comb:
            cells = int((x1 - x0) // self.comb)
            for i, ch in enumerate(lines[0][:cells]):
                cx = x0 + (i + 0.5) * self.comb
                _draw_text(ctx.draw, cx, y, ch, self.font, self.color, "center")
            return
        ax = {"left": x0, "right": x1, "center": (x0 + x1) / 2}[self.align]
        for line in lines:
            if y + self.font.size > y1 + 2:
                break
            _draw_text(
                ctx.draw, ax, y, _fit(self.font, line, x1 - x0), self.font, self.color, self.align
            )
            y += lh


@dataclass(frozen=True)
class Paragraph(Element):
    """Running text (e.g. a letter body) whose length and words change per render."""

    box: Box
    font: FontSpec
    color: Color
    line_height: float
    min_fill: float = 0.55

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        x0, y0, x1, y1 = self.box
        width = x1 - x0
        max_lines = int((y1 - y0) // self.line_height)
        target = max(1, int(max_lines * rng.uniform(self.min_fill, 1.0)))
        space = _text_width(self.font, " ")
        y, used = float(y0), 0
        while used < target and y + self.line_height <= y1:
            n_lines = min(target - used, rng.randint(2, 6))
            lines: list[str] = []
            line: list[str] = []
            lw = 0.0
            while len(lines) < n_lines:
                sentence = [rng.choice(_WORDS) for _ in range(rng.randint(5, 16))]
                sentence[0] = sentence[0].capitalize()
                sentence[-1] += "."
                for word in sentence:
                    ww = _text_width(self.font, word)
                    if line and lw + space + ww > width:
                        lines.append(" ".join(line))
                        line, lw = [], 0.0
                    lw = ww if not line else lw + space + ww
                    line.append(word)
            lines = lines[:n_lines]
            # The last line of a paragraph is short, as in real prose.
            last = lines[-1].split()
            last = last[: max(1, int(len(last) * rng.uniform(0.3, 0.9)))]
            lines[-1] = " ".join(last).rstrip(".") + "."
            for text in lines:
                if y + self.line_height > y1:
                    break
                _draw_text(ctx.draw, x0, y, text, self.font, self.color)
                y += self.line_height
            used += n_lines + 1
            y += self.line_height


@dataclass(frozen=True)
class Column:
    """One table column: header title, width fraction, field type and alignment."""

    title: str
    frac: float
    value: str
    align: str = "left"
    fmt: str = ""


@dataclass(frozen=True)
class Table(Element):
    """A ruled table with a fixed header and a random number of random rows.

    Attributes:
        grid: ``"full"`` (all rules), ``"rows"`` (horizontal rules), ``"header"`` (rules
            under the header and at the bottom only) or ``"columns"`` (outer box and
            vertical rules).
    """

    box: Box
    columns: tuple[Column, ...]
    header_font: FontSpec
    body_font: FontSpec
    ink: Color
    line_color: Color
    header_fill: Color | None
    header_color: Color
    row_height: int
    header_height: int
    grid: str
    zebra: Color | None
    min_rows: int
    max_rows: int

    def _edges(self) -> list[float]:
        x0, _, x1, _ = self.box
        edges = [float(x0)]
        for c in self.columns:
            edges.append(edges[-1] + c.frac * (x1 - x0))
        edges[-1] = float(x1)
        return edges

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        x0, y0, x1, y1 = self.box
        edges = self._edges()
        hy = y0 + self.header_height
        n_rows = (y1 - hy) // self.row_height
        if self.zebra is not None:
            for r in range(1, n_rows, 2):
                ry = hy + r * self.row_height
                draw.rectangle((x0, ry, x1, ry + self.row_height), fill=self.zebra)
        if self.header_fill is not None:
            draw.rectangle((x0, y0, x1, hy), fill=self.header_fill)
        pad = max(3, self.row_height // 4)
        ty = y0 + self.header_height / 2 - 0.58 * self.header_font.size
        for c, a, b in zip(self.columns, edges[:-1], edges[1:], strict=True):
            ax = {"left": a + pad, "right": b - pad, "center": (a + b) / 2}[c.align]
            _draw_text(
                draw,
                ax,
                ty,
                _fit(self.header_font, c.title, b - a - 2 * pad),
                self.header_font,
                self.header_color,
                c.align,
            )
        lc = self.line_color
        draw.line(((x0, hy), (x1, hy)), fill=lc, width=1)
        if self.grid in ("full", "columns"):
            draw.rectangle(self.box, outline=lc, width=1)
            for e in edges[1:-1]:
                draw.line(((e, y0), (e, y1)), fill=lc, width=1)
        if self.grid in ("full", "rows"):
            for r in range(1, n_rows + 1):
                ry = hy + r * self.row_height
                draw.line(((x0, ry), (x1, ry)), fill=lc, width=1)
        if self.grid == "header":
            draw.line(((x0, y0), (x1, y0)), fill=lc, width=1)
            draw.line(((x0, y1), (x1, y1)), fill=lc, width=1)

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        x0, y0, x1, y1 = self.box
        edges = self._edges()
        hy = y0 + self.header_height
        capacity = (y1 - hy) // self.row_height
        n = min(capacity, rng.randint(self.min_rows, self.max_rows))
        loc = ctx.template.locale
        pad = max(3, self.row_height // 4)
        subtotal = 0.0
        for r in range(n):
            qty = rng.choice((1, 1, 1, 2, 3, 4, 5, 10, 12, 20, 25))
            price = round(rng.uniform(2, 450), 2)
            amount = round(qty * price, 2)
            subtotal += amount
            ty = hy + r * self.row_height + self.row_height / 2 - 0.58 * self.body_font.size
            for c, a, b in zip(self.columns, edges[:-1], edges[1:], strict=True):
                if c.value == "qty":
                    s = str(qty)
                elif c.value == "price":
                    s = _money(price, loc)
                elif c.value == "line_amount":
                    s = _money(amount, loc)
                elif c.value == "row":
                    s = str(r + 1)
                else:
                    s = ctx.value(c.value, c.fmt)
                ax = {"left": a + pad, "right": b - pad, "center": (a + b) / 2}[c.align]
                _draw_text(
                    ctx.draw,
                    ax,
                    ty,
                    _fit(self.body_font, s, b - a - 2 * pad),
                    self.body_font,
                    self.ink,
                    c.align,
                )
        ctx.state["subtotal"] = round(subtotal, 2)


@dataclass(frozen=True)
class ItemList(Element):
    """Receipt line items: name on the left, price on the right, optional quantity line."""

    box: Box
    font: FontSpec
    color: Color
    line_height: float
    min_items: int
    max_items: int
    show_qty: bool

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        x0, y0, x1, y1 = self.box
        loc = ctx.template.locale
        n = rng.randint(self.min_items, self.max_items)
        y = float(y0)
        subtotal = 0.0
        for _ in range(n):
            qty = rng.choice((1, 1, 1, 1, 2, 2, 3, 4))
            unit = round(rng.uniform(0.5, 25), 2)
            needed = self.line_height * (2 if self.show_qty and qty > 1 else 1)
            if y + needed > y1:
                break
            name = rng.choice(_RECEIPT_ITEMS)
            price = _money(qty * unit, loc)
            _draw_text(ctx.draw, x1, y, price, self.font, self.color, "right")
            room = x1 - x0 - _text_width(self.font, price) - self.font.size
            _draw_text(ctx.draw, x0, y, _fit(self.font, name, room), self.font, self.color)
            y += self.line_height
            if self.show_qty and qty > 1:
                _draw_text(
                    ctx.draw,
                    x0 + 2 * self.font.size,
                    y,
                    f"{qty} x {_money(unit, loc)}",
                    self.font,
                    self.color,
                )
                y += self.line_height
            subtotal += qty * unit
        ctx.state["subtotal"] = round(subtotal, 2)
        ctx.state["flow_end"] = y


@dataclass(frozen=True)
class Collapse(Element):
    """Moves everything below ``y`` up to where a preceding :class:`ItemList` ended.

    Must come last; the freed strip at the bottom is filled with ``paper``.
    """

    y: int
    paper: Color

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        end = ctx.state.get("flow_end")
        if end is None or end >= self.y:
            return
        img = ctx.image
        top = round(end)
        strip = img.crop((0, self.y, img.width, img.height))
        img.paste(strip, (0, top))
        ctx.draw.rectangle((0, top + strip.height, img.width, img.height), fill=self.paper)


_LOGO_SHAPES = (
    "circle",
    "square",
    "rounded",
    "diamond",
    "hexagon",
    "triangle",
    "rings",
    "bars",
    "shield",
    "split",
    "leaf",
    "chevron",
)


@dataclass(frozen=True)
class Logo(Element):
    """A geometric logo mark with optional initials."""

    box: Box
    shape: str
    primary: Color
    secondary: Color
    initials: str
    font: FontSpec

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        x0, y0, x1, y1 = self.box
        s = x1 - x0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        p, q = self.primary, self.secondary
        text_color: Color | None = q
        ty = cy
        shape = self.shape
        if shape == "circle":
            draw.ellipse(self.box, fill=p)
        elif shape == "square":
            draw.rectangle(self.box, fill=p)
        elif shape == "rounded":
            draw.rounded_rectangle(self.box, radius=s // 4, fill=p)
        elif shape == "diamond":
            draw.polygon(((cx, y0), (x1, cy), (cx, y1), (x0, cy)), fill=p)
        elif shape == "hexagon":
            draw.regular_polygon((cx, cy, s / 2), 6, fill=p)
        elif shape == "triangle":
            draw.polygon(((cx, y0), (x1, y1), (x0, y1)), fill=p)
            ty = cy + s * 0.15
        elif shape == "rings":
            w = max(2, s // 10)
            draw.ellipse(self.box, outline=p, width=w)
            d = s * 0.22
            draw.ellipse((x0 + d, y0 + d, x1 - d, y1 - d), fill=p)
        elif shape == "bars":
            n = 4
            bw = s / (2 * n - 1)
            for i in range(n):
                h = s * (0.4 + 0.6 * (i + 1) / n)
                draw.rectangle((x0 + 2 * i * bw, y1 - h, x0 + (2 * i + 1) * bw, y1), fill=p)
            text_color = None
        elif shape == "shield":
            draw.polygon(((x0, y0), (x1, y0), (x1, cy), (cx, y1), (x0, cy)), fill=p)
            ty = cy - s * 0.08
        elif shape == "split":
            draw.pieslice(self.box, 90, 270, fill=p)
            draw.pieslice(self.box, 270, 90, fill=_mix(p, q, 0.45))
        elif shape == "leaf":
            # Lens between two quarter circles, pointing from top-left to bottom-right.
            arc1 = [
                (x0 + s * math.cos(a), y1 + s * math.sin(a))
                for a in np.linspace(-math.pi / 2, 0, 16)
            ]
            arc2 = [
                (x1 + s * math.cos(a), y0 + s * math.sin(a))
                for a in np.linspace(math.pi / 2, math.pi, 16)
            ]
            draw.polygon(arc1 + arc2, fill=p)
            text_color = None
        else:  # chevron
            w = s * 0.28
            draw.polygon(
                ((x0, y0), (x0 + w, y0), (x1, cy), (x0 + w, y1), (x0, y1), (x1 - w, cy)), fill=p
            )
            text_color = None
        if text_color is not None and self.initials:
            _draw_text(
                draw, cx, ty - 0.62 * self.font.size, self.initials, self.font, text_color, "center"
            )


@dataclass(frozen=True)
class Pattern(Element):
    """Security-print background (guilloche waves, rosette, dots or hatching)."""

    box: Box
    style: str
    color: Color
    seed: int

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        r = random.Random(self.seed)
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0, y1 - y0
        if self.style == "guilloche":
            n = r.randint(8, 16)
            f1, f2 = r.uniform(1.5, 4), r.uniform(4, 9)
            amp = h / r.uniform(5, 9)
            for k in range(n):
                base = y0 + h * (k + 0.5) / n
                ph = k * r.uniform(0.2, 0.6)
                pts = [
                    (
                        x0 + w * t / 80,
                        base
                        + amp
                        * math.sin(2 * math.pi * f1 * t / 80 + ph)
                        * math.cos(2 * math.pi * f2 * t / 80 - ph),
                    )
                    for t in range(81)
                ]
                draw.line(pts, fill=self.color, width=1)
        elif self.style == "rosette":
            cx, cy = x0 + w * r.uniform(0.3, 0.7), y0 + h * r.uniform(0.3, 0.7)
            big, small = min(w, h) * 0.42, min(w, h) * r.uniform(0.08, 0.2)
            k = r.randint(5, 11)
            for j in range(r.randint(3, 6)):
                rad = big * (1 - 0.12 * j)
                pts = []
                for t in range(241):
                    a = 2 * math.pi * t / 240
                    rr = rad + small * math.sin(k * a)
                    pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
                draw.line(pts, fill=self.color, width=1)
        elif self.style == "dots":
            step = r.randint(6, 10)
            for yy in range(y0, y1, step):
                off = (yy // step % 2) * step // 2
                for xx in range(x0 + off, x1, step):
                    draw.point((xx, yy), fill=self.color)
        else:  # hatching
            step = r.randint(5, 9)
            for d in range(-h, w, step):
                draw.line(((x0 + d, y1), (x0 + d + h, y0)), fill=self.color, width=1)


@dataclass(frozen=True)
class Barcode(Element):
    """A linear barcode or a QR-like module grid whose pattern changes every render."""

    box: Box
    style: str
    color: Color
    modules: int = 25

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0, y1 - y0
        rng = ctx.rng
        if self.style == "linear":
            unit = max(1, w // 95)
            bars = np.zeros(w, dtype=np.uint8)
            bars[: 2 * unit] = 255
            x, ink = 2 * unit, False
            while x < w - 4 * unit:
                width = rng.choice((1, 1, 1, 2, 2, 3)) * unit
                if ink:
                    bars[x : x + width] = 255
                ink = not ink
                x += width
            bars[w - 2 * unit : w - unit] = 255
            mask = Image.fromarray(np.repeat(bars[None, :], h, axis=0), "L")
        else:
            n = self.modules
            cell = max(1, min(w, h) // n)
            grid = np.frombuffer(rng.randbytes(n * n), dtype=np.uint8).reshape(n, n) > 127
            finder = np.zeros((8, 8), dtype=bool)
            finder[:7, :7] = True
            finder[1:6, 1:6] = False
            finder[2:5, 2:5] = True
            grid[:8, :8] = finder
            grid[:8, -8:] = finder[:, ::-1]
            grid[-8:, :8] = finder[::-1, :]
            mask = Image.fromarray(grid.astype(np.uint8) * 255, "L").resize(
                (n * cell, n * cell), Image.Resampling.NEAREST
            )
        ctx.image.paste(self.color, (x0, y0), mask)


@dataclass(frozen=True)
class Photo(Element):
    """Portrait placeholder: fixed background, a different head-and-shoulders each render."""

    box: Box
    bg: Color
    frame: Color | None

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle(self.box, fill=self.bg, outline=self.frame)

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0 - 2, y1 - y0 - 2
        if w < 8 or h < 8:
            return
        bg = tuple(min(255, max(0, c + rng.randint(-12, 12))) for c in self.bg)
        tile = Image.new("RGB", (w, h), bg)  # type: ignore[arg-type]
        d = ImageDraw.Draw(tile)
        skin = rng.choice(
            (
                (241, 194, 167),
                (224, 172, 135),
                (198, 134, 96),
                (141, 85, 54),
                (255, 219, 190),
                (170, 110, 75),
            )
        )
        hair = rng.choice(
            (
                (30, 25, 20),
                (70, 45, 25),
                (120, 80, 40),
                (200, 170, 110),
                (90, 90, 90),
                (160, 60, 30),
            )
        )
        shirt = rng.choice(
            ((40, 50, 80), (20, 20, 25), (120, 30, 30), (60, 90, 60), (200, 200, 205), (70, 70, 75))
        )
        cx = w * rng.uniform(0.45, 0.55)
        hw = w * rng.uniform(0.2, 0.26)
        hh = hw * rng.uniform(1.2, 1.4)
        cy = h * rng.uniform(0.38, 0.46)
        d.ellipse((cx - w * 0.45, h * 0.78, cx + w * 0.45, h * 1.5), fill=shirt)
        d.rectangle((cx - hw * 0.4, cy + hh * 0.6, cx + hw * 0.4, h * 0.85), fill=skin)
        hair_end = cy + hh * rng.uniform(-0.1, 0.9)
        d.ellipse((cx - hw * 1.08, cy - hh * 1.12, cx + hw * 1.08, hair_end), fill=hair)
        d.ellipse((cx - hw, cy - hh, cx + hw, cy + hh), fill=skin)
        d.ellipse((cx - hw * 1.02, cy - hh * 1.08, cx + hw * 1.02, cy - hh * 0.35), fill=hair)
        ctx.image.paste(tile, (x0 + 1, y0 + 1))


@dataclass(frozen=True)
class Signature(Element):
    """A handwritten-looking scribble, different every render."""

    box: Box
    color: Color

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        x0, y0, x1, y1 = self.box
        w, h = x1 - x0, y1 - y0
        cy = (y0 + y1) / 2 + h * rng.uniform(-0.1, 0.1)
        span = w * rng.uniform(0.5, 0.9)
        start = x0 + rng.uniform(0, w - span)
        n_loops = rng.randint(4, 9)
        # Cursive handwriting is roughly a trochoid: forward motion plus loops whose height,
        # width, spacing and baseline vary letter by letter, with a taller first letter.
        heights = [h * rng.uniform(0.05, 0.32) for _ in range(n_loops + 2)]
        heights[0] = h * rng.uniform(0.35, 0.5)
        widths = [rng.choice((0.0, 0.1, 0.25, 0.4, 0.55)) for _ in range(n_loops + 2)]
        steps = [rng.uniform(0.5, 1.6) for _ in range(n_loops + 2)]
        base = [h * rng.uniform(-0.12, 0.12) for _ in range(n_loops + 2)]
        total = sum(steps[:n_loops])
        slant = rng.uniform(-0.35, 0.1)
        phase = rng.uniform(0, 2 * math.pi)
        pts = []
        x = start
        for i in range(n_loops * 12 + 1):
            k = i / 12
            j = min(int(k), n_loops)
            f = k - j
            amp = heights[j] * (1 - f) + heights[j + 1] * f
            wid = widths[j] * (1 - f) + widths[j + 1] * f
            off = base[j] * (1 - f) + base[j + 1] * f
            step = span * steps[j] / total
            ang = 2 * math.pi * k + phase
            dy = -amp * math.sin(ang)
            if i:
                x += step / 12
            pts.append((x + wid * step * math.cos(ang) + slant * dy, cy + dy + off))
        width = max(1, round(h / 22))
        ctx.draw.line(pts, fill=self.color, width=width, joint="curve")
        if rng.random() < 0.5:
            ly = cy + h * rng.uniform(0.2, 0.35)
            ctx.draw.line(
                (
                    (start - span * 0.05, ly + h * 0.05),
                    (start + span * rng.uniform(0.6, 1.05), ly - h * 0.08),
                ),
                fill=self.color,
                width=width,
            )


@dataclass(frozen=True)
class CheckGroup(Element):
    """Tick boxes; one (``exclusive``) or several get a random mark each render."""

    boxes: tuple[Box, ...]
    color: Color
    outline: Color
    exclusive: bool

    def _draw_static(self, image: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        for b in self.boxes:
            draw.rectangle(b, outline=self.outline, width=1)

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        if self.exclusive:
            chosen = {rng.randrange(len(self.boxes))}
        else:
            chosen = {i for i in range(len(self.boxes)) if rng.random() < 0.4}
        for i in chosen:
            x0, y0, x1, y1 = self.boxes[i]
            p = 2
            ctx.draw.line(((x0 + p, y0 + p), (x1 - p, y1 - p)), fill=self.color, width=2)
            ctx.draw.line(((x0 + p, y1 - p), (x1 - p, y0 + p)), fill=self.color, width=2)


@dataclass(frozen=True)
class Stamp(Element):
    """An ink stamp (e.g. "PAID") that appears with probability ``prob`` near ``box``."""

    box: Box
    text: str
    font: FontSpec
    color: Color
    prob: float

    def _draw_dynamic(self, ctx: _RenderState) -> None:
        rng = ctx.rng
        if rng.random() >= self.prob:
            return
        x0, y0, x1, y1 = self.box
        dx, dy = rng.randint(-8, 8), rng.randint(-6, 6)
        box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        ctx.draw.rounded_rectangle(box, radius=4, outline=self.color, width=2)
        _draw_text(
            ctx.draw,
            (box[0] + box[2]) / 2,
            (box[1] + box[3]) / 2 - 0.6 * self.font.size,
            self.text,
            self.font,
            self.color,
            "center",
        )


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentTemplate:
    """Everything needed to render instances of one document layout.

    Attributes:
        index: Template number (class id) within its seed.
        seed: Seed of the template family.
        kind: One of :data:`KINDS`.
        title: Main title printed on the document.
        width: Page width in px at base resolution.
        height: Page height in px at base resolution.
        fonts: The title, body and value fonts (1-3 distinct files) at their main sizes.
        paper: Paper colour.
        ink: Main text colour.
        accent: Brand colour used for bands, logo and headings.
        locale: Date and money formatting conventions.
        elements: Drawing elements in paint order.
    """

    index: int
    seed: int
    kind: str
    title: str
    width: int
    height: int
    fonts: tuple[FontSpec, ...]
    paper: Color
    ink: Color
    accent: Color
    locale: Locale
    elements: tuple[Element, ...]

    @property
    def name(self) -> str:
        """Class name used for folders and labels, e.g. ``tpl_00042_invoice``."""
        return f"tpl_{self.index:05d}_{self.kind}"

    @property
    def size(self) -> tuple[int, int]:
        """Page ``(width, height)`` in px at base resolution."""
        return self.width, self.height


def _mix(a: Color, b: Color, t: float) -> Color:
    """Blend from ``a`` (t=0) to ``b`` (t=1)."""
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


class _Builder:
    """Collects elements for one template and keeps its colours, fonts and locale."""

    def __init__(
        self, rng: random.Random, kind: str, width: int, height: int, fonts: dict[str, str | None]
    ):
        self.rng = rng
        self.kind = kind
        self.w = width
        self.h = height
        self.paths = fonts
        self.elements: list[Element] = []
        hue = rng.random()
        self.accent = _hsv(hue, rng.uniform(0.45, 0.9), rng.uniform(0.35, 0.72))
        self.ink = rng.choice(((20, 20, 20), (35, 35, 40), (25, 35, 60), (45, 40, 38)))
        if kind == "id_card":
            self.paper = _hsv(hue + rng.uniform(-0.1, 0.1), rng.uniform(0.04, 0.16), 0.97)
        elif kind == "receipt":
            self.paper = rng.choice(((255, 255, 255), (250, 249, 245), (247, 247, 247)))
        else:
            self.paper = rng.choice(
                (
                    (255, 255, 255),
                    (255, 255, 255),
                    (250, 247, 238),
                    (246, 246, 244),
                    (252, 252, 248),
                )
            )
        self.light = _mix(self.accent, self.paper, 0.86)
        self.muted = _mix(self.ink, self.paper, 0.45)
        self.rule = _mix(self.ink, self.paper, rng.uniform(0.2, 0.6))
        self.locale = Locale(
            date_format=rng.choice(_DATE_FORMATS),
            money_format=rng.choice(_MONEY_FORMATS),
            decimal_comma=rng.random() < 0.3,
            tax_rate=rng.choice((5.0, 7.0, 8.0, 10.0, 13.0, 19.0, 20.0, 21.0, 25.0)),
        )
        self.upper_labels = rng.random() < 0.35

    # -- fonts and text ------------------------------------------------------------------
    def font(self, role: str, size: float) -> FontSpec:
        return FontSpec(self.paths[role], max(6, round(size)))

    def fit_font(self, role: str, text: str, max_width: float, size: float) -> FontSpec:
        f = self.font(role, size)
        while f.size > 7 and _text_width(f, text) > max_width:
            f = FontSpec(f.path, f.size - 1)
        return f

    def width_of(self, font: FontSpec, text: str) -> float:
        return _text_width(font, text)

    def label(self, text: str) -> str:
        return text.upper() if self.upper_labels else text

    def text(
        self,
        x: float,
        y: float,
        text: str,
        font: FontSpec,
        color: Color | None = None,
        align: str = "left",
    ) -> None:
        self.elements.append(Text(round(x), round(y), text, font, color or self.ink, align))

    def rect(
        self,
        box: Sequence[float],
        fill: Color | None = None,
        outline: Color | None = None,
        width: int = 1,
        radius: int = 0,
    ) -> None:
        self.elements.append(Rect(_ibox(box), fill, outline, width, radius))

    def hline(
        self,
        x0: float,
        x1: float,
        y: float,
        color: Color | None = None,
        width: int = 1,
        dash: int = 0,
    ) -> None:
        self.elements.append(
            Line((round(x0), round(y)), (round(x1), round(y)), color or self.rule, width, dash)
        )

    def field(
        self,
        box: Sequence[float],
        value: str,
        font: FontSpec,
        color: Color | None = None,
        align: str = "left",
        fmt: str = "",
        upper: bool = False,
        comb: int = 0,
    ) -> None:
        if value == "pattern" and not fmt:
            fmt = _random_pattern(self.rng)
        self.elements.append(
            Field(_ibox(box), value, font, color or self.ink, align, fmt, upper, comb)
        )

    def inline_field(
        self,
        x0: float,
        x1: float,
        y: float,
        value: str,
        font: FontSpec,
        align: str = "left",
        upper: bool = False,
    ) -> None:
        # A box 1.16 font sizes tall centres the value exactly where Text(y=y) would sit.
        self.field((x0, y, x1, y + 1.16 * font.size), value, font, align=align, upper=upper)

    def logo(
        self,
        x: float,
        y: float,
        size: float,
        initials: str,
        primary: Color | None = None,
        secondary: Color | None = None,
        shape: str | None = None,
    ) -> None:
        s = round(size)
        shape = shape or self.rng.choice(_LOGO_SHAPES)
        fsize = s * (0.42 if len(initials) <= 2 else 0.3)
        self.elements.append(
            Logo(
                (round(x), round(y), round(x) + s, round(y) + s),
                shape,
                primary or self.accent,
                secondary or self.paper,
                initials,
                self.font("title", fsize),
            )
        )


def _ibox(box: Sequence[float]) -> Box:
    x0, y0, x1, y1 = box
    return round(x0), round(y0), round(x1), round(y1)


def _initials(company: str) -> str:
    return "".join(w[0] for w in company.replace("&", " ").split()[:3] if w[0].isalpha())


def _issuer_lines(rng: random.Random) -> list[str]:
    lines = [f"{_street(rng)}, {_city_line(rng)}"]
    web = f"www.{rng.choice(_COMPANY_WORDS).lower()}.{rng.choice(('com', 'co.uk', 'eu', 'org'))}"
    lines.append(f"Tel {_phone(rng)}  ·  {web}")
    if rng.random() < 0.4:
        lines.append(f"VAT No. {_fill_pattern(rng, '@@#########')}")
    return lines


def _letterhead(b: _Builder, company: str, m: float) -> float:
    """Draw a company letterhead; return the y below it."""
    rng = b.rng
    issuer = _issuer_lines(rng)
    small = b.font("body", rng.uniform(6.5, 8))
    slh = small.size * 1.35
    style = rng.choice(("band", "logo_left", "logo_right", "centered", "plain"))
    initials = _initials(company)
    if style == "band":
        bh = b.h * rng.uniform(0.075, 0.11)
        b.rect((0, 0, b.w, bh), fill=b.accent)
        ls = bh * 0.62
        b.logo(m, (bh - ls) / 2, ls, initials, primary=b.paper, secondary=b.accent)
        nf = b.fit_font("title", company, b.w - 2 * m - ls * 1.3, bh * rng.uniform(0.26, 0.36))
        b.text(m + ls * 1.3, bh / 2 - 0.6 * nf.size, company, nf, b.paper)
        y = bh + m * 0.35
        for line in issuer:
            b.text(b.w - m, y, line, small, b.muted, "right")
            y += slh
        return y + m * 0.3
    ls = b.h * rng.uniform(0.05, 0.075)
    y0 = m * rng.uniform(0.6, 0.9)
    if style == "centered":
        b.logo((b.w - ls) / 2, y0, ls, initials)
        y = y0 + ls + 4
        nf = b.fit_font("title", company, b.w - 2 * m, rng.uniform(12, 17))
        b.text(b.w / 2, y, company, nf, b.accent if rng.random() < 0.6 else b.ink, "center")
        y += nf.size * 1.4
        for line in issuer:
            b.text(b.w / 2, y, line, small, b.muted, "center")
            y += slh
    else:
        right = style == "logo_right"
        has_logo = style != "plain"
        lx = b.w - m - ls if right else m
        if has_logo:
            b.logo(lx, y0, ls, initials)
        tx = m if right or not has_logo else m + ls * 1.25
        avail = b.w - 2 * m - (ls * 1.25 if has_logo else 0)
        nf = b.fit_font("title", company, avail, rng.uniform(12, 17))
        b.text(tx, y0, company, nf, b.accent if rng.random() < 0.6 else b.ink)
        y = y0 + nf.size * 1.35
        for line in issuer:
            b.text(tx, y, _fit(small, line, avail), small, b.muted)
            y += slh
        y = max(y, y0 + ls)
    y += 4
    if rng.random() < 0.75:
        b.hline(
            m, b.w - m, y, b.accent if rng.random() < 0.5 else b.rule, width=rng.choice((1, 1, 2))
        )
    return y + m * 0.4


def _footer(b: _Builder, m: float, text: str) -> float:
    """Draw a page footer; return the y where it starts (content must stay above)."""
    rng = b.rng
    small = b.font("body", rng.uniform(6, 7.5))
    style = rng.choice(("rule", "band", "plain", "none"))
    if style == "none":
        return b.h - m * 0.7
    if style == "band":
        bh = small.size * 2.4
        b.rect((0, b.h - bh, b.w, b.h), fill=b.accent)
        b.text(
            b.w / 2,
            b.h - bh / 2 - 0.6 * small.size,
            _fit(small, text, b.w - 2 * m),
            small,
            b.paper,
            "center",
        )
        return b.h - bh - 6
    y = b.h - m * 0.6 - small.size
    b.text(b.w / 2, y, _fit(small, text, b.w - 2 * m), small, b.muted, "center")
    if style == "rule":
        b.hline(m, b.w - m, y - 4, b.rule)
    return y - 8


def _build_letter(b: _Builder, company: str) -> None:
    rng = b.rng
    m = b.w * rng.uniform(0.07, 0.11)
    if rng.random() < 0.2:
        b.rect((0, 0, rng.randint(5, 12), b.h), fill=b.accent)
    y = _letterhead(b, company, m)
    bottom = _footer(
        b,
        m,
        f"{company.title()}  ·  Registered in {rng.choice(_COUNTRIES)}  ·  "
        f"Company No. {_fill_pattern(rng, '########')}",
    )
    body = b.font("body", rng.uniform(8, 9.5))
    vfont = b.font("value", body.size)
    lh = body.size * rng.uniform(1.3, 1.5)
    y += lh * rng.uniform(0.5, 1.5)
    # Recipient block left, date on the right (or under it).
    b.field((m, y, m + b.w * 0.5, y + lh * 3.2), "address_block", vfont)
    date_right = rng.random() < 0.6
    if date_right:
        b.field((b.w - m - b.w * 0.3, y, b.w - m, y + lh), "date", vfont, align="right")
        y += lh * 4
    else:
        y += lh * 3.6
        b.field((m, y, m + b.w * 0.4, y + lh), "date", vfont)
        y += lh * 1.6
    if rng.random() < 0.6:
        lab = rng.choice(("Our ref:", "Reference:", "Ref.", "Account no.:", "Case number:"))
        lw = b.width_of(body, lab) + 4
        b.text(m, y, lab, body, b.ink)
        b.inline_field(m + lw, m + lw + b.w * 0.35, y, "pattern", vfont)
        y += lh * 1.5
    bold = b.font("title", body.size)
    b.field((m, y, b.w - m, y + lh), "subject", bold)
    y += lh * 1.8
    b.field((m, y, b.w - m, y + lh), "salutation", body)
    y += lh * 1.6
    sig_h = lh * 6
    b.elements.append(
        Paragraph(_ibox((m, y, b.w - m, bottom - sig_h)), body, b.ink, lh, rng.uniform(0.55, 0.8))
    )
    y = bottom - sig_h + lh * 0.5
    b.text(m, y, rng.choice(_CLOSINGS), body)
    y += lh
    b.elements.append(
        Signature(
            _ibox((m, y, m + b.w * 0.35, y + lh * 2.5)),
            rng.choice(((20, 30, 110), (20, 20, 20), (30, 30, 60))),
        )
    )
    y += lh * 2.7
    b.field((m, y, m + b.w * 0.5, y + lh), "name", bold)
    b.text(m, y + lh, rng.choice(_JOB_TITLES), body, b.muted)


def _build_invoice(b: _Builder, company: str, doc_title: str) -> None:
    rng = b.rng
    m = b.w * rng.uniform(0.06, 0.09)
    y = _letterhead(b, company, m)
    bottom = _footer(
        b,
        m,
        f"{company.title()}  ·  {_fill_pattern(rng, '@@## #### #### ####')}"
        f"  ·  Thank you for your business",
    )
    body = b.font("body", rng.uniform(7.5, 9))
    vfont = b.font("value", body.size)
    head = b.font("title", body.size)
    lh = body.size * 1.45
    cw = b.w - 2 * m
    # Document title.
    tf = b.fit_font("title", doc_title, cw * 0.6, rng.uniform(15, 22))
    title_right = rng.random() < 0.5
    b.text(
        b.w - m if title_right else m,
        y,
        doc_title,
        tf,
        b.accent if rng.random() < 0.6 else b.ink,
        "right" if title_right else "left",
    )
    y += tf.size * 1.6
    # Meta block (number, dates, ...) and bill-to.
    metas = [
        ("Invoice No.", "pattern"),
        ("Date", "date"),
        ("Due date", "date"),
        ("Customer ID", "pattern"),
        ("PO number", "pattern"),
        ("Account", "digits"),
    ]
    metas = metas[:2] + rng.sample(metas[2:], rng.randint(1, 3))
    mw = cw * rng.uniform(0.4, 0.48)
    mx = b.w - m - mw if rng.random() < 0.75 else m
    bx = m if mx > m + 1 else b.w - m - mw
    meta_style = rng.choice(("plain", "boxed", "shaded"))
    my = y
    for lab, kind in metas:
        if meta_style == "shaded":
            b.rect((mx, my, mx + mw * 0.45, my + lh), fill=b.light)
        if meta_style == "boxed":
            b.rect((mx, my, mx + mw, my + lh), outline=b.rule)
        b.text(
            mx + 3,
            my + lh / 2 - 0.58 * body.size,
            b.label(lab),
            body,
            b.muted if meta_style == "plain" else b.ink,
        )
        b.field((mx + mw * 0.47, my, mx + mw - 3, my + lh), kind, vfont, align="right")
        my += lh
    heading = rng.choice(("BILL TO", "Bill to:", "Invoice to", "CUSTOMER", "Sold to:"))
    b.text(bx, y, heading, head, b.accent)
    b.field((bx, y + lh, bx + mw, y + lh * 5.2), "company_address", vfont)
    y = max(my, y + lh * 5.4) + lh
    # Line items.
    cols: list[Column] = []
    if rng.random() < 0.4:
        cols.append(Column(b.label("SKU"), 0.16, "pattern", "left", _random_pattern(rng)))
    elif rng.random() < 0.3:
        cols.append(Column("#", 0.06, "row", "center"))
    desc = rng.choice(("Description", "Item", "Product / Service"))
    cols.append(Column(b.label(desc), 0, "item"))
    cols.append(Column(b.label(rng.choice(("Qty", "Quantity", "Units"))), 0.1, "qty", "right"))
    cols.append(
        Column(b.label(rng.choice(("Unit price", "Rate", "Price"))), 0.17, "price", "right")
    )
    if rng.random() < 0.3:
        cols.append(Column(b.label("Tax"), 0.08, "percent", "right"))
    cols.append(
        Column(b.label(rng.choice(("Amount", "Total", "Line total"))), 0.18, "line_amount", "right")
    )
    rest = 1.0 - sum(c.frac for c in cols)
    cols = [Column(c.title, rest, c.value, c.align, c.fmt) if c.frac == 0 else c for c in cols]
    rh = round(body.size * rng.uniform(1.7, 2.2))
    hh = round(rh * rng.uniform(1.0, 1.3))
    totals_h = lh * 4.5
    n_rows = max(3, int((bottom - y - totals_h - lh * 6 - hh) // rh))
    n_rows = min(n_rows, rng.randint(6, 14))
    header_fill = rng.choice((b.accent, b.light, _mix(b.ink, b.paper, 0.9), None))
    header_color = b.paper if header_fill == b.accent else b.ink
    table = Table(
        _ibox((m, y, b.w - m, y + hh + n_rows * rh)),
        tuple(cols),
        head,
        vfont,
        b.ink,
        b.rule,
        header_fill,
        header_color,
        rh,
        hh,
        rng.choice(("full", "rows", "header", "columns")),
        _mix(b.accent, b.paper, 0.94) if rng.random() < 0.3 else None,
        2,
        n_rows,
    )
    b.elements.append(table)
    y = table.box[3] + lh * 0.6
    # Totals.
    tw = cw * rng.uniform(0.38, 0.46)
    tx = b.w - m - tw
    rows = [("Subtotal", "subtotal"), (f"Tax ({b.locale.tax_rate:g}%)", "tax")]
    if rng.random() < 0.4:
        rows.append(("Shipping", "shipping"))
    for lab, kind in rows:
        b.text(tx, y + lh / 2 - 0.58 * body.size, b.label(lab), body)
        b.field((tx + tw * 0.45, y, b.w - m - 3, y + lh), kind, vfont, align="right")
        y += lh
    total_fill = rng.random() < 0.5
    if total_fill:
        b.rect((tx - 3, y, b.w - m, y + lh * 1.3), fill=b.accent)
    else:
        b.hline(tx, b.w - m, y, b.ink)
    tcol = b.paper if total_fill else b.ink
    big = b.font("title", body.size * 1.15)
    b.text(tx, y + lh * 0.65 - 0.58 * big.size, b.label("Total due"), big, tcol)
    b.field((tx + tw * 0.4, y, b.w - m - 3, y + lh * 1.3), "total", big, tcol, align="right")
    # Payment notes on the left, next to the totals.
    ny = table.box[3] + lh * 0.6
    nw = tx - m - 10
    b.text(m, ny, b.label(rng.choice(("Payment details", "Notes", "Terms & conditions"))), head)
    ny += lh
    notes = [
        f"Bank: {rng.choice(_COMPANY_WORDS).title()} Bank",
        f"IBAN: {_fill_pattern(rng, '@@## #### #### #### ##')}",
        f"Payment due within {rng.choice((14, 30, 45, 60))} days",
    ]
    small = b.font("body", body.size * 0.9)
    for line in notes[: rng.randint(2, 3)]:
        b.text(m, ny, _fit(small, line, nw), small, b.muted)
        ny += small.size * 1.4
    if rng.random() < 0.45:
        side = min(nw * 0.4, bottom - ny - 8, b.w * 0.18)
        if side > 30:
            style = rng.choice(("qr", "linear"))
            bw = side if style == "qr" else min(nw, side * 2.2)
            bh = side if style == "qr" else side * 0.45
            b.elements.append(
                Barcode(
                    _ibox((m, ny + 6, m + bw, ny + 6 + bh)), style, b.ink, rng.choice((21, 25, 29))
                )
            )
    if rng.random() < 0.3:
        sf = b.font("title", 14)
        text = rng.choice(("PAID", "RECEIVED", "COPY", "APPROVED"))
        sw = b.width_of(sf, text) + 16
        sx, sy = b.w * rng.uniform(0.35, 0.6), table.box[1] + rh * 2
        b.elements.append(
            Stamp(
                _ibox((sx, sy, sx + sw, sy + sf.size * 1.8)),
                text,
                sf,
                rng.choice(((200, 30, 30), (30, 60, 170), (30, 120, 60))),
                0.5,
            )
        )


def _build_receipt(b: _Builder, store: str) -> None:
    rng = b.rng
    m = b.w * rng.uniform(0.05, 0.08)
    cw = b.w - 2 * m
    chars = rng.randint(30, 40)
    body = b.font("body", cw / (chars * 0.6))
    lh = body.size * rng.uniform(1.25, 1.45)
    dash = rng.choice((0, 2, 3, 4))
    y = m * rng.uniform(0.8, 1.6)
    if rng.random() < 0.45:
        ls = b.w * rng.uniform(0.16, 0.24)
        b.logo((b.w - ls) / 2, y, ls, _initials(store), primary=b.ink, secondary=b.paper)
        y += ls + lh * 0.5
    tf = b.fit_font("title", store, cw, body.size * rng.uniform(1.4, 2.1))
    b.text(b.w / 2, y, store, tf, b.ink, "center")
    y += tf.size * 1.4
    for line in (_street(rng).upper(), rng.choice(_CITIES).upper(), f"TEL {_phone(rng)}"):
        b.text(b.w / 2, y, _fit(body, line, cw), body, b.ink, "center")
        y += lh
    if rng.random() < 0.5:
        b.text(b.w / 2, y, f"VAT {_fill_pattern(rng, '@@ ### #### ##')}", body, b.ink, "center")
        y += lh

    def rule() -> None:
        nonlocal y
        if dash:
            b.hline(m, b.w - m, y + lh * 0.4, b.ink, 1, dash)
        else:
            b.text(b.w / 2, y, _fit(body, "-" * 60, cw), body, b.ink, "center")
        y += lh

    rule()
    # Transaction header: date and time on one line, then receipt/cashier numbers.
    b.inline_field(m, m + cw * 0.6, y, "date", body)
    b.inline_field(b.w - m - cw * 0.35, b.w - m, y, "time", body, align="right")
    y += lh
    for lab, kind in rng.sample(
        (
            ("RECEIPT #", "pattern"),
            ("CASHIER:", "first_name"),
            ("TRANS:", "digits"),
            ("STORE:", "pattern"),
        ),
        rng.randint(1, 2),
    ):
        b.text(m, y, lab, body)
        b.inline_field(m + b.width_of(body, lab + " "), b.w - m, y, kind, body, upper=True)
        y += lh
    rule()
    footer_lines = rng.randint(1, 2)
    big = b.font("title", body.size * rng.uniform(1.1, 1.35))
    code_h = round(b.h * rng.uniform(0.045, 0.07)) if rng.random() < 0.55 else 0
    tail = lh * (4.4 + footer_lines) + big.size * 1.4 + (code_h + 8 if code_h else 0) + m * 0.6
    b.elements.append(
        ItemList(_ibox((m, y, b.w - m, b.h - tail)), body, b.ink, lh, 3, 25, rng.random() < 0.5)
    )
    y = tail_top = b.h - tail
    rule()
    for lab, kind in (("SUBTOTAL", "subtotal"), (f"TAX {b.locale.tax_rate:g}%", "tax")):
        b.text(m, y, lab, body)
        b.inline_field(b.w / 2, b.w - m, y, kind, body, align="right")
        y += lh
    b.text(m, y, "TOTAL", big)
    b.inline_field(b.w / 2, b.w - m, y, "total", big, align="right")
    y += big.size * 1.4
    b.inline_field(m, b.w - m, y, "card", body, upper=True)
    y += lh * 1.4
    for line in rng.sample(_THANKS, footer_lines):
        b.text(b.w / 2, y, _fit(body, line, cw), body, b.ink, "center")
        y += lh
    if code_h:
        bw = cw * rng.uniform(0.6, 0.9)
        b.elements.append(
            Barcode(_ibox(((b.w - bw) / 2, y + 4, (b.w + bw) / 2, y + 4 + code_h)), "linear", b.ink)
        )
    # Real receipts end right after the totals, however many items were bought.
    b.elements.append(Collapse(round(tail_top), b.paper))


def _build_form(b: _Builder, company: str, doc_title: str) -> None:
    rng = b.rng
    m = b.w * rng.uniform(0.05, 0.08)
    cw = b.w - 2 * m
    small = b.font("body", rng.uniform(6, 7))
    body = b.font("body", rng.uniform(7, 8.5))
    vfont = b.font("value", rng.uniform(8, 9.5))
    head = b.font("title", body.size * 1.1)
    code = f"Form {_fill_pattern(rng, rng.choice(('@@-###', '@###', '##-@', '@@@ ##')))}"
    if rng.random() < 0.5:
        code += f" (Rev. {rng.randint(1, 12):02d}/{rng.randint(2005, 2023)})"
    header = rng.choice(("band", "centered", "boxed"))
    y = m * 0.7
    if header == "band":
        bh = b.h * rng.uniform(0.07, 0.1)
        b.rect((0, 0, b.w, bh), fill=b.accent)
        ls = bh * 0.6
        b.logo(m, (bh - ls) / 2, ls, _initials(company), b.paper, b.accent)
        tf = b.fit_font("title", company, cw - ls * 1.3, bh * 0.3)
        b.text(m + ls * 1.3, bh * 0.3 - 0.5 * tf.size, company, tf, b.paper)
        b.text(
            m + ls * 1.3, bh * 0.68 - 0.6 * small.size, doc_title, b.font("body", bh * 0.2), b.paper
        )
        y = bh + 6
        b.text(b.w - m, y, code, small, b.muted, "right")
        y += small.size * 2
    else:
        code_right = rng.random() < 0.6
        b.text(
            b.w - m if code_right else m, y, code, small, b.muted, "right" if code_right else "left"
        )
        y += small.size * 1.8
        ls = b.h * 0.06
        b.logo(m, y, ls, _initials(company))
        tf = b.fit_font("title", doc_title, cw - ls * 2.6, rng.uniform(12, 16))
        if header == "boxed":
            b.rect((m + ls * 1.3, y, b.w - m, y + ls), outline=b.ink, width=rng.choice((1, 2)))
        b.text(b.w / 2 + ls * 0.65, y + ls * 0.3 - 0.5 * tf.size, doc_title, tf, b.ink, "center")
        cf = b.fit_font("body", company, cw - ls * 2.6, small.size * 1.2)
        b.text(b.w / 2 + ls * 0.65, y + ls * 0.72 - 0.5 * cf.size, company, cf, b.muted, "center")
        y += ls + 8
    # Instructions.
    for _ in range(rng.randint(1, 3)):
        b.text(m, y, _fit(small, _words(rng, 14, 20) + ".", cw), small, b.muted)
        y += small.size * 1.4
    y += 6
    footer_y = _footer(b, m, f"{code}  ·  {company.title()}  ·  Page 1 of {rng.randint(1, 4)}")
    sig_h = body.size * 5
    limit = footer_y - sig_h - 6
    field_style = rng.choice(("box", "underline", "cell", "comb"))
    head_style = rng.choice(("bar", "rule", "numbered", "light"))
    label_h = small.size * 1.4
    row_h = {
        "box": label_h + vfont.size * 2.0 + 5,
        "underline": vfont.size * 2.3,
        "cell": vfont.size * 3.0,
        "comb": label_h + vfont.size * 2.0 + 5,
    }[field_style]
    fields = list(_FORM_FIELDS)
    rng.shuffle(fields)
    sections = rng.sample(_SECTION_TITLES, 5)
    s_i = 0
    while y + head.size * 2 + row_h < limit and s_i < len(sections):
        title = sections[s_i]
        s_i += 1
        if head_style == "numbered":
            title = f"{s_i}. {title}"
        sh = head.size * 1.7
        if head_style == "bar":
            b.rect((m, y, b.w - m, y + sh), fill=b.accent)
            b.text(m + 4, y + sh / 2 - 0.58 * head.size, title, head, b.paper)
        elif head_style == "light":
            b.rect((m, y, b.w - m, y + sh), fill=b.light)
            b.text(m + 4, y + sh / 2 - 0.58 * head.size, title, head, b.ink)
        else:
            b.text(m, y + sh / 2 - 0.58 * head.size, title, head, b.accent)
            b.hline(m, b.w - m, y + sh, b.rule if head_style == "numbered" else b.accent)
        y += sh + 5
        kind = rng.random()
        if kind < 0.2 and y + row_h * 2 < limit:
            # A tick-box question.
            opts = rng.choice(_CHECK_OPTIONS)
            q = b.label(
                rng.choice(
                    ("Type", "Category", "Status", "Please tick one", "Method", "Title", "Purpose")
                )
            )
            b.text(m, y + 2, q + ":", body)
            x = m + b.width_of(body, q + ":  ") + 6
            boxes = []
            bs = round(body.size * 1.2)
            for o in opts:
                if x + bs + b.width_of(body, o) + 4 > b.w - m:
                    break
                boxes.append(_ibox((x, y, x + bs, y + bs)))
                b.text(x + bs + 4, y + 2, o, body)
                x += bs + b.width_of(body, o) + 16
            if boxes:
                b.elements.append(CheckGroup(tuple(boxes), b.ink, b.ink, rng.random() < 0.8))
            y += bs + 8
        if kind > 0.8 and y + row_h * 3 < limit:
            ncols = rng.randint(3, 4)
            picks = rng.sample(_FORM_FIELDS, ncols)
            cols = tuple(Column(b.label(lab), 1 / ncols, v) for lab, v in picks)
            rh = round(vfont.size * 1.9)
            n = min(rng.randint(3, 5), int((limit - y - rh) // rh))
            t = Table(
                _ibox((m, y, b.w - m, y + rh * (n + 1))),
                cols,
                b.font("title", small.size),
                vfont,
                b.ink,
                b.ink,
                b.light if rng.random() < 0.5 else None,
                b.ink,
                rh,
                rh,
                "full",
                None,
                1,
                n,
            )
            b.elements.append(t)
            y = t.box[3] + 10
            continue
        # Inline labels and character cells eat width, so those styles get fewer columns.
        if field_style in ("comb", "underline"):
            ncols = rng.choice((1, 2, 2))
        else:
            ncols = rng.choice((1, 2, 2, 3))
        nrows = rng.randint(1, 3)
        colw = cw / ncols
        for _ in range(nrows):
            if y + row_h > limit:
                break
            for c in range(ncols):
                if not fields:
                    fields = list(_FORM_FIELDS)
                lab, vt = fields.pop()
                lab = b.label(lab)
                x0 = m + c * colw
                gap = 8 if field_style != "cell" and c < ncols - 1 else 0
                x1 = x0 + colw - gap
                if field_style == "box":
                    b.text(x0, y, lab, small, b.muted)
                    box = (x0, y + label_h, x1, y + row_h - 5)
                    b.rect(box, outline=b.rule)
                    b.field((box[0] + 4, box[1], box[2] - 4, box[3]), vt, vfont)
                elif field_style == "comb":
                    b.text(x0, y, lab, small, b.muted)
                    cell = round(vfont.size * 1.3)
                    n_cells = int((x1 - x0) // cell)
                    by0, by1 = y + label_h, y + row_h - 5
                    b.rect((x0, by0, x0 + n_cells * cell, by1), outline=b.rule)
                    tick = round(by1 - (by1 - by0) * 0.4)
                    for k in range(1, n_cells):
                        cx = round(x0 + k * cell)
                        b.elements.append(Line((cx, tick), (cx, round(by1)), b.rule))
                    b.field((x0, by0, x0 + n_cells * cell, by1), vt, vfont, upper=True, comb=cell)
                elif field_style == "cell":
                    b.rect((x0, y, x1, y + row_h), outline=b.ink)
                    b.text(x0 + 3, y + 2, lab, small, b.muted)
                    b.field((x0 + 5, y + row_h * 0.42, x1 - 4, y + row_h - 1), vt, vfont)
                else:
                    b.text(x0, y + row_h - 4 - body.size * 1.1, lab + ":", body)
                    lx = x0 + b.width_of(body, lab + ": ") + 2
                    b.hline(
                        lx, x1, y + row_h - 4, b.rule, dash=rng.choice((0, 0, 2)) if c == 0 else 0
                    )
                    b.field((lx + 3, y, x1, y + row_h - 5), vt, vfont)
            y += row_h
        y += 8
    # Declaration and signature.
    y = max(y, limit) + 4
    b.text(
        m,
        y,
        _fit(small, "I declare that the information given above is true and complete.", cw),
        small,
        b.muted,
    )
    y += small.size * 2.2
    sw = cw * 0.45
    b.hline(m, m + sw, y + body.size * 2.2, b.ink)
    b.text(m, y + body.size * 2.5, b.label("Signature"), small, b.muted)
    b.elements.append(
        Signature(_ibox((m + 4, y - 2, m + sw - 4, y + body.size * 2.1)), (25, 35, 110))
    )
    dx = b.w - m - cw * 0.35
    b.hline(dx, b.w - m, y + body.size * 2.2, b.ink)
    b.text(dx, y + body.size * 2.5, b.label("Date"), small, b.muted)
    b.field((dx + 4, y + 2, b.w - m, y + body.size * 2.1), "date", vfont)


def _build_id_card(b: _Builder, issuer: str, doc_title: str) -> None:
    rng = b.rng
    m = b.h * rng.uniform(0.05, 0.08)
    if rng.random() < 0.7:
        pcolor = _mix(b.accent, b.paper, rng.uniform(0.75, 0.88))
        b.elements.append(
            Pattern(
                (0, 0, b.w, b.h),
                rng.choice(("guilloche", "rosette", "dots", "hatch")),
                pcolor,
                rng.randrange(1 << 30),
            )
        )
    band = rng.random() < 0.75
    y = m
    if band:
        bh = b.h * rng.uniform(0.16, 0.22)
        b.rect((0, 0, b.w, bh), fill=b.accent)
        ls = bh * 0.72
        logo_right = rng.random() < 0.4
        lx = b.w - m - ls if logo_right else m
        b.logo(lx, (bh - ls) / 2, ls, _initials(issuer), b.paper, b.accent)
        tx = m if logo_right else m + ls * 1.25
        avail = b.w - 2 * m - ls * 1.25
        tf = b.fit_font("title", issuer, avail, bh * 0.32)
        b.text(tx, bh * 0.32 - 0.5 * tf.size, issuer, tf, b.paper)
        sf = b.fit_font("body", doc_title, avail, bh * 0.22)
        b.text(tx, bh * 0.7 - 0.6 * sf.size, doc_title, sf, _mix(b.paper, b.accent, 0.15))
        y = bh + m * 0.7
        if rng.random() < 0.5:
            b.rect((0, b.h - b.h * 0.04, b.w, b.h), fill=b.accent)
    else:
        ls = b.h * 0.15
        b.logo(b.w - m - ls, m, ls, _initials(issuer))
        tf = b.fit_font("title", issuer, b.w - 3 * m - ls, b.h * 0.06)
        b.text(m, m, issuer, tf, b.accent)
        sf = b.fit_font("title", doc_title, b.w - 3 * m - ls, b.h * 0.075)
        b.text(m, m + tf.size * 1.3, doc_title, sf, b.ink)
        y = m + ls + m * 0.5
    bottom = b.h - m * (1.5 if band else 1.0)
    has_mrz = rng.random() < 0.35
    mono = b.font("value", b.h * 0.045)
    if has_mrz:
        mrz_h = mono.size * 2.8
        bottom -= mrz_h
        b.rect((0, bottom + 2, b.w, bottom + mrz_h + m), fill=_mix(b.paper, (255, 255, 255), 0.6))
        for k in range(2):
            b.field(
                (
                    m,
                    bottom + 6 + k * mono.size * 1.3,
                    b.w - m,
                    bottom + 6 + (k + 1) * mono.size * 1.3,
                ),
                "mrz",
                mono,
            )
    # Photo.
    pw = b.w * rng.uniform(0.22, 0.28)
    ph = min(pw * rng.uniform(1.2, 1.3), bottom - y - (b.h * 0.1 if rng.random() < 0.5 else 0))
    pw = min(pw, ph / 1.15)
    photo_left = rng.random() < 0.7
    px = m if photo_left else b.w - m - pw
    b.elements.append(
        Photo(
            _ibox((px, y, px + pw, y + ph)),
            rng.choice(((220, 225, 232), (235, 235, 235), (200, 215, 235), (230, 230, 220))),
            b.rule if rng.random() < 0.6 else None,
        )
    )
    if bottom - (y + ph) > b.h * 0.08:
        b.elements.append(Signature(_ibox((px, y + ph + 2, px + pw, bottom)), (20, 30, 90)))
    # Fields beside the photo.
    fx0 = px + pw + m if photo_left else m
    fx1 = b.w - m if photo_left else px - m
    if rng.random() < 0.3 and not has_mrz and fx1 - fx0 > b.w * 0.35:
        chip = (fx1 - b.w * 0.1, bottom - b.h * 0.16, fx1, bottom)
        b.rect(chip, fill=(212, 175, 85), outline=(150, 120, 50), radius=4)
        cy = (chip[1] + chip[3]) / 2
        b.hline(chip[0], chip[2], cy, (150, 120, 50))
        b.elements.append(
            Line(
                (round((chip[0] + chip[2]) / 2), round(chip[1])),
                (round((chip[0] + chip[2]) / 2), round(chip[3])),
                (150, 120, 50),
            )
        )
        fx1 -= b.w * 0.12
    lab_f = b.font("body", b.h * rng.uniform(0.028, 0.034))
    val_role = "title" if rng.random() < 0.5 else "value"
    val_f = b.font(val_role, b.h * rng.uniform(0.04, 0.05))
    label_color = b.accent if rng.random() < 0.5 else b.muted
    pitch = lab_f.size * 1.3 + val_f.size * 1.5
    specs = [
        ("Surname", "last_name"),
        ("Given names", "first_name"),
        ("Date of birth", "date"),
        ("Document no.", "pattern"),
        ("Expiry date", "date"),
    ]
    extra = [
        ("Nationality", "country"),
        ("Sex", "sex"),
        ("Department", "department"),
        ("Place of birth", "city"),
        ("Date of issue", "date"),
        ("Member ID", "pattern"),
    ]
    specs += rng.sample(extra, 3)
    if rng.random() < 0.3:
        specs = [("Name", "name")] + specs[2:]
    ncols = 2 if fx1 - fx0 > b.w * 0.45 and rng.random() < 0.6 else 1
    rows = max(1, int((bottom - y) // pitch))
    specs = specs[: rows * ncols]
    colw = (fx1 - fx0) / ncols
    upper = rng.random() < 0.6
    for i, (lab, vt) in enumerate(specs):
        # Name-like fields get a full row; the rest fill columns.
        c, r = i % ncols, i // ncols
        x0 = fx0 + c * colw
        yy = y + r * pitch
        b.text(x0, yy, b.label(lab) if not upper else lab.upper(), lab_f, label_color)
        b.field((x0, yy + lab_f.size * 1.2, x0 + colw - 6, yy + pitch - 2), vt, val_f, upper=upper)


def make_template(index: int, seed: int = 0) -> DocumentTemplate:
    """Create the document template number ``index`` of the family ``seed``.

    The result depends only on ``(seed, index)`` and on the fonts installed (see
    :func:`find_fonts`); with no fonts, Pillow's built-in font is used.

    Args:
        index: Template (class) number, any non-negative integer.
        seed: Family seed; different seeds give unrelated template sets.

    Returns:
        A frozen, hashable :class:`DocumentTemplate`.
    """
    rng = random.Random(f"openrecog-synthetic-template:{seed}:{index}")
    kind = rng.choice(KINDS)
    long_side = BASE_LONG_SIDE
    if kind == "receipt":
        height, width = long_side, round(long_side * rng.uniform(0.36, 0.5))
    elif kind == "id_card":
        width, height = long_side, round(long_side / rng.uniform(1.5, 1.65))
    else:
        height, width = long_side, round(long_side / rng.uniform(1.29, 1.45))
    fonts = _pick_fonts(rng, find_fonts(), kind)
    b = _Builder(rng, kind, width, height, fonts)
    company = f"{rng.choice(_COMPANY_WORDS)} {rng.choice(_COMPANY_SUFFIXES)}"
    if kind == "letter":
        title = company
        _build_letter(b, company)
    elif kind == "invoice":
        doc = rng.choice(_DOC_TITLES["invoice"])
        title = f"{company} – {doc}"
        _build_invoice(b, company, doc)
    elif kind == "receipt":
        title = f"{rng.choice(_COMPANY_WORDS)} {rng.choice(_STORE_SUFFIXES)}"
        _build_receipt(b, title)
    elif kind == "form":
        doc = rng.choice(_DOC_TITLES["form"])
        title = f"{company} – {doc}"
        _build_form(b, company, doc)
    else:
        doc = rng.choice(_DOC_TITLES["id_card"])
        if rng.random() < 0.35:
            company = (
                f"{rng.choice(('REPUBLIC OF', 'STATE OF', 'KINGDOM OF'))} "
                f"{rng.choice(_COMPANY_WORDS)}"
            )
        title = f"{company} – {doc}"
        _build_id_card(b, company, doc)
    main = (FontSpec(fonts["title"], 16), FontSpec(fonts["body"], 9), FontSpec(fonts["value"], 9))
    return DocumentTemplate(
        index=index,
        seed=seed,
        kind=kind,
        title=title,
        width=width,
        height=height,
        fonts=main,
        paper=b.paper,
        ink=b.ink,
        accent=b.accent,
        locale=b.locale,
        elements=tuple(b.elements),
    )


# --------------------------------------------------------------------------------------------
# Rendering and degradation
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _static_layer(template: DocumentTemplate) -> Image.Image:
    img = Image.new("RGB", template.size, template.paper)
    draw = ImageDraw.Draw(img)
    for el in template.elements:
        el._draw_static(img, draw)
    return img


def _homography(src: np.ndarray, dst: np.ndarray) -> tuple[float, ...]:
    """Coefficients of the projective map sending the 4 points ``src`` to ``dst``."""
    a = np.zeros((8, 8))
    rhs = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst, strict=True)):
        a[2 * i] = (x, y, 1, 0, 0, 0, -u * x, -u * y)
        a[2 * i + 1] = (0, 0, 0, x, y, 1, -v * x, -v * y)
        rhs[2 * i], rhs[2 * i + 1] = u, v
    return tuple(float(c) for c in np.linalg.solve(a, rhs))


_NOISE_SIDE = 1024


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    # Cropping a fixed noise field at a random offset is ~5x cheaper than fresh gaussian noise
    # per image and just as deterministic.
    return np.random.default_rng(12345).standard_normal(
        (_NOISE_SIDE, _NOISE_SIDE), dtype=np.float32
    )


def _degrade(img: Image.Image, rng: random.Random, out_size: tuple[int, int]) -> Image.Image:
    """Make a clean page look like a phone photo of a printout, mildly.

    The warp also rescales ``img`` to ``out_size`` so that no separate resize is needed.
    """
    sw, sh = img.size
    w, h = out_size
    scale_px = max(w, h) / BASE_LONG_SIDE
    # Geometry: rotation, zoom/crop, shift and a slight perspective in one warp.
    ang = math.radians(rng.uniform(-3.0, 3.0))
    zoom = rng.uniform(0.93, 1.05)
    cx = w / 2 + rng.uniform(-0.025, 0.025) * w
    cy = h / 2 + rng.uniform(-0.025, 0.025) * h
    ca, sa = math.cos(ang) * zoom, math.sin(ang) * zoom
    jitter = 0.022 * max(w, h)
    dst = np.array(
        [
            (
                cx + ca * (x - w / 2) - sa * (y - h / 2) + rng.uniform(-jitter, jitter),
                cy + sa * (x - w / 2) + ca * (y - h / 2) + rng.uniform(-jitter, jitter),
            )
            for x, y in ((0, 0), (w, 0), (w, h), (0, h))
        ]
    )
    src = np.array([(0, 0), (sw, 0), (sw, sh), (0, sh)], dtype=np.float64)
    backdrop = _hsv(rng.random(), rng.uniform(0, 0.35), rng.uniform(0.2, 0.75))
    img = img.transform(
        (w, h),
        Image.Transform.PERSPECTIVE,
        _homography(dst, src),
        Image.Resampling.BILINEAR,
        fillcolor=backdrop,
    )
    if rng.random() < 0.5:
        # A box blur is ~2x cheaper than GaussianBlur and looks the same at these radii.
        img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.4, 1.0) * scale_px))
    # Contrast, brightness and a colour cast (paper tint / white balance) as one lookup table.
    contrast = rng.uniform(0.8, 1.08)
    bright = rng.uniform(-18, 12)
    lut: list[int] = []
    for _ in range(3):
        gain = rng.uniform(0.92, 1.04)
        lut.extend(
            min(255, max(0, round(((v - 128.0) * contrast + 128.0 + bright) * gain)))
            for v in range(256)
        )
    img = img.point(lut)
    shadow = rng.random() < 0.6
    noise = rng.random() < 0.6
    if shadow or noise:
        arr = np.asarray(img, dtype=np.float32)
        if shadow:
            theta = rng.uniform(0, 2 * math.pi)
            xs = np.linspace(-0.5, 0.5, w, dtype=np.float32) * math.cos(theta)
            ys = np.linspace(-0.5, 0.5, h, dtype=np.float32) * math.sin(theta)
            ramp = np.clip(xs[None, :] + ys[:, None] + (rng.uniform(-0.3, 0.3) + 0.5), 0.0, 1.0)
            ramp *= -rng.uniform(0.1, 0.35)
            ramp += 1.0
            arr *= ramp[:, :, None]
        if noise:
            sigma = rng.uniform(1.5, 6.0)
            bank = _noise_bank()
            if h <= _NOISE_SIDE and w <= _NOISE_SIDE:
                oy, ox = rng.randrange(_NOISE_SIDE - h + 1), rng.randrange(_NOISE_SIDE - w + 1)
                field = bank[oy : oy + h, ox : ox + w] * sigma
            else:
                field = np.resize(bank, (h, w)) * sigma
            arr += field[:, :, None]
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), "RGB")
    if rng.random() < 0.6:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=rng.randint(35, 85))
        buf.seek(0)
        img = Image.open(buf).convert("RGB")
    return img


def render(
    template: DocumentTemplate,
    rng: random.Random,
    degrade: bool = True,
    size: int | None = None,
) -> Image.Image:
    """Render one instance of ``template`` with fresh random contents.

    Args:
        template: Layout to render (see :func:`make_template`).
        rng: Source of all randomness; the same seed gives the same image.
        degrade: Apply mild photo-like degradations (warp, blur, lighting, noise, JPEG).
        size: If given, resize so that the longer side has this many pixels (aspect kept).

    Returns:
        RGB image.
    """
    page = _static_layer(template).copy()
    ctx = _RenderState(template, page, rng)
    for el in template.elements:
        el._draw_dynamic(ctx)
    out = page.size
    if size is not None:
        f = size / max(page.size)
        out = (max(1, round(page.width * f)), max(1, round(page.height * f)))
    # The warp resamples bilinearly without antialiasing, so strong downscaling is done by a
    # proper resize first; mild downscaling is folded into the warp for speed.
    if out != page.size and (not degrade or out[0] < 0.75 * page.width):
        page = page.resize(out, Image.Resampling.BILINEAR)
    if degrade:
        page = _degrade(page, rng, out)
    return page


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _instance_rng(seed: int, template_index: int, instance: int) -> random.Random:
    return random.Random(f"openrecog-synthetic-instance:{seed}:{template_index}:{instance}")


def generate_folder(
    root: str | Path,
    num_classes: int,
    images_per_class: int,
    seed: int = 0,
    start_index: int = 0,
    size: int = 384,
    degrade: bool = True,
    split: str | None = None,
    progress: bool = False,
) -> Path:
    """Write a folder dataset ``root/<class_name>/<i>.jpg`` plus ``root/labels.csv``.

    Classes are templates ``start_index .. start_index + num_classes - 1``. Rows
    ``path,label,split`` are appended to ``labels.csv`` (created with a header if missing;
    paths already listed are not repeated). Output is deterministic in the arguments.

    Args:
        root: Output directory (created if needed).
        num_classes: Number of templates.
        images_per_class: Instances rendered per template.
        seed: Template family seed.
        start_index: First template index, so disjoint class sets can share a seed.
        size: Longer side of the saved images in pixels.
        degrade: Apply photo-like degradations.
        split: Value of the ``split`` column; ``"train"`` when ``None``.
        progress: Show a tqdm progress bar.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    labels = root / "labels.csv"
    known: set[str] = set()
    if labels.exists():
        with labels.open(newline="") as f:
            known = {row["path"] for row in csv.DictReader(f)}
    split_name = split or "train"
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_classes * images_per_class, desc="synthetic documents")
    new_file = not labels.exists() or labels.stat().st_size == 0
    with labels.open("a", newline="") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(("path", "label", "split"))
        for index in range(start_index, start_index + num_classes):
            tpl = make_template(index, seed)
            cls_dir = root / tpl.name
            cls_dir.mkdir(exist_ok=True)
            for i in range(images_per_class):
                img = render(tpl, _instance_rng(seed, index, i), degrade=degrade, size=size)
                img.save(cls_dir / f"{i}.jpg", format="JPEG", quality=92)
                rel = f"{tpl.name}/{i}.jpg"
                if rel not in known:
                    writer.writerow((rel, tpl.name, split_name))
                    known.add(rel)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return root


class SyntheticDocumentDataset(Dataset):
    """On-the-fly dataset of ``num_classes`` templates x ``images_per_class`` instances.

    Item ``i`` is instance ``i % images_per_class`` of class ``i // images_per_class`` and is
    rendered deterministically, so it matches the image :func:`generate_folder` writes for
    the same arguments (before JPEG encoding).

    Attributes:
        num_classes: Number of templates (classes).
        images_per_class: Instances per class.
        templates: The :class:`DocumentTemplate` of each class.
        class_names: Class names such as ``tpl_00042_invoice``.
        labels: Integer label of every item.
    """

    def __init__(
        self,
        num_classes: int,
        images_per_class: int,
        seed: int = 0,
        start_index: int = 0,
        size: int | None = 384,
        degrade: bool = True,
        transform: Callable[[Image.Image], Any] | None = None,
    ):
        """Build the templates; images are rendered lazily in ``__getitem__``.

        Args:
            num_classes: Number of templates (classes).
            images_per_class: Instances per class.
            seed: Template family seed.
            start_index: First template index.
            size: Longer side of returned images; ``None`` keeps the base resolution.
            degrade: Apply photo-like degradations.
            transform: Optional callable applied to the PIL image.
        """
        self.num_classes = num_classes
        self.images_per_class = images_per_class
        self.seed = seed
        self.start_index = start_index
        self.size = size
        self.degrade = degrade
        self.transform = transform
        self.templates = [make_template(start_index + c, seed) for c in range(num_classes)]
        self.class_names = [t.name for t in self.templates]
        self.labels = [c for c in range(num_classes) for _ in range(images_per_class)]

    def __len__(self) -> int:
        return self.num_classes * self.images_per_class

    def __getitem__(self, i: int) -> tuple[Any, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        c, j = divmod(i, self.images_per_class)
        rng = _instance_rng(self.seed, self.start_index + c, j)
        img = render(self.templates[c], rng, degrade=self.degrade, size=self.size)
        if self.transform is not None:
            return self.transform(img), c
        return img, c

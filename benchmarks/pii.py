"""Personal-data detection in text: precision and recall per entity type, polymodal (Presidio pattern recognizers
plus our patterns, no language model) against scrubadub on the same generated corpus.

The corpus: Faker values of several locales (emails, phone numbers as each locale writes them, card numbers, IBANs,
IPv4/IPv6 addresses, URLs, Bitcoin addresses, US SSNs, Spanish NIFs, Italian fiscal codes) embedded in varied
sentences, with exact character spans recorded, plus sentences full of numbers that are not personal (order
numbers, prices, dates, times, versions, quantities, postcodes) for precision. A planted value is found when a
detection of its type overlaps it; a detection is right when it overlaps a planted value of its type.

    python benchmarks/pii.py [--sentences 3000] [--seed 0]

Prints a table and writes benchmarks/results/pii.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"]
TYPES = [
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "URL",
    "CRYPTO",
    "US_SSN",
    "ES_NIF",
    "IT_FISCAL_CODE",
]
# scrubadub's filth types -> ours (its other types count against its precision only through these)
SCRUBADUB_TYPES = {
    "email": "EMAIL_ADDRESS",
    "phone": "PHONE_NUMBER",
    "credit_card": "CREDIT_CARD",
    "url": "URL",
    "social_security_number": "US_SSN",
}

B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def bitcoin_address(rng: random.Random) -> str:
    """A valid base58check P2PKH (1...) or P2SH (3...) address of random bytes."""
    payload = bytes([rng.choice([0x00, 0x05])]) + rng.randbytes(20)
    check = hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    n = int.from_bytes(payload + check, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(payload + check) - len((payload + check).lstrip(b"\0"))) + out


def groups(s: str, size: int = 4) -> str:
    return " ".join(s[i : i + size] for i in range(0, len(s), size))


def value(kind: str, fakes: dict, rng: random.Random) -> str:
    loc = rng.choice(LOCALES)
    f = fakes[loc]
    if kind == "EMAIL_ADDRESS":
        return rng.choice([f.email, f.free_email, f.company_email, f.safe_email])()
    if kind == "PHONE_NUMBER":
        return rng.choice([f.phone_number, f.phone_number, f.msisdn])() if loc == "en_US" else f.phone_number()
    if kind == "CREDIT_CARD":
        number = fakes["en_US"].credit_card_number(rng.choice(["visa16", "mastercard", "amex", "discover"]))
        return groups(number) if rng.random() < 0.5 and len(number) == 16 else number
    if kind == "IBAN_CODE":
        iban = f.iban()
        return groups(iban) if rng.random() < 0.5 else iban
    if kind == "IP_ADDRESS":
        return f.ipv4() if rng.random() < 0.6 else f.ipv6()
    if kind == "URL":
        return rng.choice([f.url, f.uri, f.uri])()
    if kind == "CRYPTO":
        return bitcoin_address(rng)
    if kind == "US_SSN":
        return fakes["en_US"].ssn()
    if kind == "ES_NIF":
        return fakes["es_ES"].nif()
    if kind == "IT_FISCAL_CODE":
        return fakes["it_IT"].ssn()
    raise ValueError(kind)


LEAD = {
    "EMAIL_ADDRESS": ["write to", "my email is", "mail", "contact:", "cc", "reply to", "send it to", ""],
    "PHONE_NUMBER": ["call me at", "phone:", "tel.", "mobile", "reach her on", "ring", "number", ""],
    "CREDIT_CARD": ["card", "paid with card", "charge", "card number:", "cc no", "Visa", ""],
    "IBAN_CODE": ["IBAN", "transfer to", "account:", "wire the money to", "bank account", ""],
    "IP_ADDRESS": ["from IP", "login from", "host", "client address", "seen at", ""],
    "URL": ["see", "profile at", "link:", "visit", "my page", ""],
    "CRYPTO": ["send BTC to", "wallet", "bitcoin address", "pay to", ""],
    "US_SSN": ["SSN", "social security number", "ssn:", "SS#", ""],
    "ES_NIF": ["NIF", "DNI", "documento", "tax id", ""],
    "IT_FISCAL_CODE": ["codice fiscale", "CF", "fiscal code", "tax code", ""],
}
OPEN = [
    "Hi team,",
    "Note:",
    "Customer update -",
    "As discussed,",
    "",
    "Ticket {order}:",
    "On {date},",
    "Re: invoice {order}.",
]
CLOSE = [
    "Thanks.",
    "Order {order} ships on {date}.",
    "Total {price} EUR for {qty} items.",
    "Meeting at {time} in room {room}.",
    "Running version {version}.",
    "Postcode {zip}.",
    "",
    "See section {version} of the manual.",
]
NOISE = [
    "Order {order} of {qty} units costs {price} USD, due {date} at {time}.",
    "Build {version} fixed {qty} bugs; {pct}% of tests pass since {date}.",
    "Room {room}, floor {qty}, postcode {zip}; the meeting is at {time}.",
    "Invoice {order} dated {date}: {qty} x {price} EUR.",
    "Temperature rose {pct}% to {price} degrees between {time} and {date}.",
]


def fill(template: str, rng: random.Random) -> str:
    return template.format(
        order=rng.randint(10000, 99999999),
        qty=rng.randint(1, 500),
        price=f"{rng.uniform(1, 9999):.2f}",
        date=f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}",
        time=f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        room=rng.randint(100, 999),
        version=f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
        zip=rng.randint(10000, 99999),
        pct=rng.randint(1, 99),
    )


def corpus(n: int, seed: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """n sentences with their planted spans; about one in four holds no personal value at all."""
    from faker import Faker

    rng = random.Random(seed)
    fakes = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakes.values()):
        f.seed_instance(seed * 100 + i)
    out = []
    for i in range(n):
        if i % 4 == 3:
            out.append((fill(rng.choice(NOISE), rng), []))
            continue
        text, spans = fill(rng.choice(OPEN), rng), []
        for kind in rng.sample(TYPES, rng.choice([1, 1, 2])):
            lead = rng.choice(LEAD[kind])
            v = value(kind, fakes, rng)
            text = f"{text} {lead} ".lstrip() if text or lead else ""
            start = len(text)
            text += v
            spans.append((kind, start, start + len(v)))
            text += rng.choice([",", ".", ";", "", " and"])
        text = (text + " " + fill(rng.choice(CLOSE), rng)).strip()
        out.append((text, spans))
    return out


def score(found: list[list[tuple[str, int, int]]], data) -> dict[str, dict[str, float]]:
    planted, recalled, predicted, correct = Counter(), Counter(), Counter(), Counter()
    for (_, truth), pred in zip(data, found, strict=True):
        for kind, s, e in truth:
            planted[kind] += 1
            recalled[kind] += any(k == kind and ps < e and s < pe for k, ps, pe in pred)
        for kind, ps, pe in pred:
            if kind in TYPES:
                predicted[kind] += 1
                correct[kind] += any(k == kind and ps < e and s < pe for k, s, e in truth)
    out = {}
    for kind in TYPES:
        out[kind] = {
            "planted": planted[kind],
            "recall": recalled[kind] / planted[kind] if planted[kind] else None,
            "detected": predicted[kind],
            "precision": correct[kind] / predicted[kind] if predicted[kind] else None,
        }
    return out


def run_polymodal(data) -> tuple[list, float]:
    from polymodal.privacy.text import find

    find("warm up")
    start = time.perf_counter()
    found = [[(s.entity, s.start, s.end) for s in find(text)] for text, _ in data]
    return found, time.perf_counter() - start


def run_scrubadub(data) -> tuple[list, float]:
    import scrubadub

    scrubber = scrubadub.Scrubber()
    start = time.perf_counter()
    found = []
    for text, _ in data:
        spans = []
        for filth in scrubber.iter_filth(text):
            for f in getattr(filth, "filths", None) or [filth]:  # merged filth holds its parts
                spans.append((SCRUBADUB_TYPES.get(f.type, f.type), f.beg, f.end))
        found.append(spans)
    return found, time.perf_counter() - start


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pii.json")
    ap.add_argument("--show-misses", type=int, default=0, help="Print this many misses and false alarms per type")
    args = ap.parse_args()

    data = corpus(args.sentences, args.seed)
    ours, ours_s = run_polymodal(data)
    peer, peer_s = run_scrubadub(data)
    results = {"polymodal": score(ours, data), "scrubadub": score(peer, data)}

    print(f"{'entity':16s} {'n':>5s} | {'polymodal P':>11s} {'R':>6s} | {'scrubadub P':>11s} {'R':>6s}")
    for kind in TYPES:
        a, b = results["polymodal"][kind], results["scrubadub"][kind]
        print(
            f"{kind:16s} {a['planted']:5d} | {fmt(a['precision']):>11s} {fmt(a['recall']):>6s} |"
            f" {fmt(b['precision']):>11s} {fmt(b['recall']):>6s}"
        )
    goal = {
        kind: (r["recall"] or 0) >= 0.99 and (r["precision"] or 0) >= 0.95 for kind, r in results["polymodal"].items()
    }
    print(f"polymodal {ours_s:.1f} s, scrubadub {peer_s:.1f} s for {len(data)} sentences; goal met: {goal}")
    if args.show_misses:
        shown = Counter()
        for (text, truth), pred in zip(data, ours, strict=True):
            for kind, s, e in truth:
                if not any(k == kind and ps < e and s < pe for k, ps, pe in pred) and shown[kind] < args.show_misses:
                    shown[kind] += 1
                    print(f"MISS {kind}: {text[s:e]!r} in {text!r} -> {[(k, text[a:b]) for k, a, b in pred]}")
            for kind, ps, pe in pred:
                if (
                    not any(k == kind and ps < e and s < pe for k, s, e in truth)
                    and shown["FP" + kind] < args.show_misses
                ):
                    shown["FP" + kind] += 1
                    print(f"FALSE {kind}: {text[ps:pe]!r} in {text!r}")

    from polymodal.model.artifact import write_json

    write_json(
        args.out,
        {
            "benchmark": "pii",
            "command": f"python benchmarks/pii.py --sentences {args.sentences} --seed {args.seed}",
            "corpus": {
                "sentences": len(data),
                "without_personal_values": sum(1 for _, t in data if not t),
                "locales": LOCALES,
                "planted": sum(len(t) for _, t in data),
            },
            "matching": "a planted value is recalled when a detection of its type overlaps it; a detection is "
            "correct when it overlaps a planted value of its type",
            "scrubadub": "scrubadub.Scrubber() with its default detectors and locale (en_US); its types mapped: "
            + json.dumps(SCRUBADUB_TYPES),
            "results": results,
            "goal_recall_0.99_precision_0.95": goal,
            "seconds": {"polymodal": round(ours_s, 2), "scrubadub": round(peer_s, 2)},
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

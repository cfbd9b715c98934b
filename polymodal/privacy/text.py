"""Personal data in text: Presidio's pattern recognizers (no language model), an optional NER model, operators.

Without an NER model only what has a shape is found: email addresses, phone numbers (`phonenumbers`), credit card
numbers (Luhn checksum), IBANs (checksum), IP and MAC addresses, URLs, crypto wallet addresses, and the national ID
numbers Presidio ships (US SSN/ITIN/passport/driver licence/bank number, UK NHS/NINO, ES NIF/NIE, IT fiscal code,
and the other country recognizers). Names, places and organizations need an NER model (`ner_model`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from polymodal.errors import UserError

LANGUAGE = "en"
OPERATORS = ("placeholder", "mask", "hash")
# Found by shape; dates are left out on purpose (most dates in a table are not personal, and a date alone is
# not an identifier), so are UUIDs (record keys, not people).
PATTERN_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "URL",
    "CRYPTO",
    "US_SSN",
    "US_ITIN",
    "US_PASSPORT",
    "US_DRIVER_LICENSE",
    "US_BANK_NUMBER",
    "UK_NHS",
    "UK_NINO",
    "ES_NIF",
    "ES_NIE",
    "IT_FISCAL_CODE",
    "MEDICAL_LICENSE",
)
NER_LABELS = {"PER": "PERSON", "PERSON": "PERSON", "LOC": "LOCATION", "GPE": "LOCATION", "ORG": "ORGANIZATION"}
# Phone numbers are matched as written in these regions (national formats); international (+..) ones anywhere.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "CA", "AU", "CH", "AT", "BE", "PL", "SE", "IE")
DEFAULT_THRESHOLD = 0.4
PHONE_CONTEXT = ["phone", "number", "telephone", "tel", "cell", "cellphone", "mobile", "call", "ring", "reach", "fax"]


@dataclass(frozen=True)
class Span:
    entity: str
    start: int
    end: int
    score: float


class _BlankSpacyEngine:
    """A Presidio NLP engine from `spacy.blank`: tokens and lower-cased words for context words ("phone",
    "card", "ssn" raise a nearby match's score), no entities, and nothing to download."""

    def __new__(cls, language: str = LANGUAGE):
        import spacy
        from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine

        class Engine(NlpEngine):
            def __init__(self) -> None:
                self.nlp = {language: spacy.blank(language)}

            def load(self) -> None:
                pass

            def is_loaded(self) -> bool:
                return True

            def process_text(self, text: str, language: str) -> NlpArtifacts:
                doc = self.nlp[language](text)
                return NlpArtifacts(
                    entities=[],
                    tokens=doc,
                    tokens_indices=[t.idx for t in doc],
                    lemmas=[t.text.lower() for t in doc],
                    nlp_engine=self,
                    language=language,
                )

            def process_batch(self, texts: Iterable[str], language: str, batch_size: int = 1, n_process: int = 1, **kw):
                for text in texts:
                    yield text, self.process_text(text, language)

            def is_stopword(self, word: str, language: str) -> bool:
                # spaCy counts "call" as a stop word; for context it is the word that says "phone number".
                return self.nlp[language].vocab[word].is_stop and word.lower() not in PHONE_CONTEXT

            def is_punct(self, word: str, language: str) -> bool:
                return self.nlp[language].vocab[word].is_punct

            def get_supported_entities(self) -> list[str]:
                return []

            def get_supported_languages(self) -> list[str]:
                return [language]

        return Engine()


def _extra_recognizers() -> list[Any]:
    """What the stock recognizers miss, found by `benchmarks/pii.py`."""
    import tldextract
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer, EmailRecognizer, PhoneRecognizer

    # tldextract fetches the public suffix list from the internet by default; its bundled snapshot is enough.
    offline_tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return offline_tld(pattern_text).fqdn != ""

    class OfflineUrlRecognizer(PatternRecognizer):
        """URLs with a scheme or `www.`: a bare `name.tld` is too often a file name or a sentence's end."""

        def __init__(self) -> None:
            patterns = [
                Pattern("url_scheme", r"\b(?:https?|ftp)://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]", 0.9),
                Pattern("url_www", r"\bwww\.[a-z0-9-]+(?:\.[a-z0-9-]+)+(?:/[^\s<>\"']*[^\s<>\"'.,;:!?)\]])?", 0.8),
            ]
            super().__init__(supported_entity="URL", patterns=patterns, supported_language=LANGUAGE)

    class WrittenPhoneRecognizer(PatternRecognizer):
        """Phone numbers as people write them, valid or not (Faker's are often not): international with a
        trunk '(0)' and any grouping, US (555) 123-4567 / 555.123.4567 with an extension, and European national
        numbers starting with 0 in groups. 9 to 15 digits, so dates and times never qualify."""

        def __init__(self) -> None:
            ext = r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?"
            patterns = [
                Pattern(
                    "international",
                    r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?\(?\d{1,5}\)?(?:[ .-]?\d{2,6}){1,5}" + ext + r"(?!\w)",
                    0.5,
                ),
                Pattern(
                    "us",
                    r"(?<![\w.-])(?:(?:\+?1|001)[.-])?(?:\(\d{3}\)\s?|\d{3}[.-])\d{3}[.-]\d{4}" + ext + r"(?![\w-])",
                    0.5,
                ),
                Pattern(
                    "national", r"(?<![\w.-])\(?0\d{1,4}\)?(?:[ -]|\)-?)\d{2,8}(?:[ -]\d{2,4}){0,4}(?![\w-])", 0.45
                ),
                # A bare run of 10-15 digits (an MSISDN) counts only with a context word ("phone", "mobile", "call").
                Pattern("bare", r"(?<![\w.+-])\d{10,15}(?![\w-])", 0.1),
            ]
            super().__init__(
                supported_entity="PHONE_NUMBER", patterns=patterns, supported_language=LANGUAGE, context=PHONE_CONTEXT
            )

        def validate_result(self, pattern_text: str) -> bool | None:
            """None keeps the pattern's score; False drops the match."""
            return None if 9 <= sum(c.isdigit() for c in pattern_text.split("x")[0]) <= 15 else False

    # Mastercard's 2-series (2221-2720), which the stock pattern misses; the recognizer checks the Luhn sum.
    mastercard2 = Pattern("mastercard 2-series", r"\b2(?:2[2-9]\d|[3-6]\d\d|7[01]\d|720)(?:[ -]?\d{4}){3}\b", 0.3)
    return [
        OfflineEmailRecognizer(),
        OfflineUrlRecognizer(),
        WrittenPhoneRecognizer(),
        CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, mastercard2], supported_language=LANGUAGE),
        PhoneRecognizer(supported_regions=list(PHONE_REGIONS), supported_language=LANGUAGE, context=PHONE_CONTEXT),
        # IPv6 in its compressed forms, which the stock recognizer's pattern misses in running text.
        PatternRecognizer(
            supported_entity="IP_ADDRESS",
            patterns=[Pattern("ipv6", r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){2,7}(?::|[0-9a-fA-F]{1,4})(?![\w:])", 0.6)],
            supported_language=LANGUAGE,
        ),
    ]


@lru_cache(maxsize=4)
def analyzer(ner_model: str | None = None) -> Any:
    """Presidio's AnalyzerEngine with every pattern recognizer it ships (national IDs of every country included),
    our extra patterns, and the NER model's recognizer when one is given. No spaCy model is loaded."""
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry
    from presidio_analyzer import predefined_recognizers as pr

    nlp = _BlankSpacyEngine()
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    replaced = {"EmailRecognizer", "UrlRecognizer", "PhoneRecognizer", "CreditCardRecognizer"}
    for name in dir(pr):
        cls = getattr(pr, name)
        if not (isinstance(cls, type) and issubclass(cls, EntityRecognizer)) or name in replaced:
            continue
        module = cls.__module__
        if ".generic." not in module and ".country_specific." not in module:
            continue  # NER engines, remote services, LLMs
        try:
            rec = cls(supported_language=LANGUAGE)
        except TypeError:  # a recognizer with required arguments: not a plain pattern recognizer
            continue
        if set(rec.supported_entities) & set(PATTERN_ENTITIES):
            registry.add_recognizer(rec)
    for rec in _extra_recognizers():
        registry.add_recognizer(rec)
    if ner_model is not None:
        registry.add_recognizer(HuggingFaceNer(ner_model))
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[LANGUAGE])


def HuggingFaceNer(model: str) -> Any:  # noqa: N802 (a class made at call time, so presidio is imported lazily)
    """Names, places and organizations from a Hugging Face token-classification model (hub id or folder)."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult
    from transformers import pipeline

    class _Ner(EntityRecognizer):
        def __init__(self) -> None:
            self.pipe = pipeline("token-classification", model=model, aggregation_strategy="simple", device=-1)
            super().__init__(
                supported_entities=sorted(set(NER_LABELS.values())), name="HuggingFaceNer", supported_language=LANGUAGE
            )

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            out = []
            for e in self.pipe(text):
                label = NER_LABELS.get(str(e["entity_group"]).upper().removeprefix("B-").removeprefix("I-"))
                if label is None or (entities and label not in entities) or e["end"] <= e["start"]:
                    continue
                out.append(RecognizerResult(label, int(e["start"]), int(e["end"]), float(e["score"])))
            return out

    return _Ner()


def find(
    text: str, ner_model: str | None = None, entities: Iterable[str] | None = None, threshold: float = DEFAULT_THRESHOLD
) -> list[Span]:
    """The personal values in `text`, as non-overlapping spans (a higher score, then a longer span, wins)."""
    if not text or not text.strip():
        return []
    wanted = list(entities) if entities else [*PATTERN_ENTITIES, *(set(NER_LABELS.values()) if ner_model else ())]
    results = analyzer(ner_model).analyze(
        text=text, language=LANGUAGE, entities=wanted, score_threshold=threshold, return_decision_process=True
    )
    results = [r for r in results if _plausible(r, text)]
    kept: list[Span] = []
    for r in sorted(results, key=lambda r: (-_PRIORITY.get(r.entity_type, 1), -r.score, r.start - r.end, r.start)):
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(Span(r.entity_type, r.start, r.end, r.score))
    return sorted(kept, key=lambda s: s.start)


# Types whose pattern is a bare run of digits or letters that many other numbers share (an order number passes
# the NHS checksum one time in eleven): they count only next to one of their context words ("nhs", "passport").
NEEDS_CONTEXT = {"UK_NHS", "US_BANK_NUMBER", "US_DRIVER_LICENSE", "US_PASSPORT", "MEDICAL_LICENSE", "US_ITIN"}
# When two types claim overlapping text, a structured, checksummed type beats a phone number or a name.
_PRIORITY = {
    t: 2
    for t in ("EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "CRYPTO", "US_SSN", "ES_NIF", "ES_NIE", "IT_FISCAL_CODE")
}
_BARE_DIGITS = re.compile(r"\d+")


def _plausible(result: Any, text: str) -> bool:
    explanation = result.analysis_explanation
    boosted = bool(explanation is not None and explanation.supportive_context_word)
    if result.entity_type in NEEDS_CONTEXT:
        return boosted
    if result.entity_type == "PHONE_NUMBER":
        # No phone number has fewer than 7 digits (prices and times do); a bare run of digits is a phone number
        # when it is as long as a national number (9+) or said to be one.
        span = text[result.start : result.end]
        if sum(c.isdigit() for c in span) < 7:
            return False
        if _BARE_DIGITS.fullmatch(span):
            return boosted or len(span) >= 9
    return True


class TextAnonymizer:
    """Replace what `find` finds: a typed placeholder (`<EMAIL_ADDRESS>`), a mask (`*****`), or a salted hash
    (`<EMAIL_ADDRESS_3f9a1c0b7e>`: the same value gives the same token everywhere the same salt is used)."""

    def __init__(
        self,
        operator: str = "placeholder",
        salt: str = "",
        ner_model: str | None = None,
        entities: Iterable[str] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
    ):
        if operator not in OPERATORS:
            raise UserError(f"unknown operator {operator!r}; choose one of {list(OPERATORS)}")
        if operator == "hash" and not salt:
            raise UserError("the hash operator needs a salt (a secret string): without one, tokens can be reversed")
        self.operator, self.salt, self.ner_model = operator, salt, ner_model
        self.entities, self.threshold = list(entities) if entities else None, threshold
        self.counts: Counter[str] = Counter()

    def token(self, entity: str, value: str) -> str:
        digest = hmac.new(self.salt.encode(), value.strip().lower().encode(), hashlib.sha256).hexdigest()[:10]
        return f"<{entity}_{digest}>"

    def __call__(self, text: str) -> str:
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

        spans = find(text, self.ner_model, self.entities, self.threshold)
        if not spans:
            return text
        self.counts.update(s.entity for s in spans)
        operators = {}
        for entity in {s.entity for s in spans}:
            if self.operator == "placeholder":
                operators[entity] = OperatorConfig("replace", {"new_value": f"<{entity}>"})
            elif self.operator == "mask":
                operators[entity] = OperatorConfig(
                    "mask", {"masking_char": "*", "chars_to_mask": 10**6, "from_end": False}
                )
            else:
                operators[entity] = OperatorConfig("custom", {"lambda": lambda v, e=entity: self.token(e, v)})
        results = [RecognizerResult(s.entity, s.start, s.end, s.score) for s in spans]
        return _engine(AnonymizerEngine).anonymize(text=text, analyzer_results=results, operators=operators).text


@lru_cache(maxsize=1)
def _engine(cls: type) -> Any:
    return cls()


_WORDISH = re.compile(r"\S")


def personal_vocabulary(words: Iterable[str], threshold: float = DEFAULT_THRESHOLD) -> dict[str, int]:
    """How many vocabulary entries look personal, per entity type (never the entries themselves).

    A word vocabulary holds pieces (the tokenizer splits 'jane.doe@example.com' at the dots and the '@'), so what
    is found here is what survives as one token: long digit runs (card, phone, ID numbers) and, in categorical
    vocabularies, whole values."""
    counts: Counter[str] = Counter()
    for w in words:
        if isinstance(w, str) and _WORDISH.search(w):
            for s in find(w, threshold=threshold):
                counts[s.entity] += 1
    return dict(counts)

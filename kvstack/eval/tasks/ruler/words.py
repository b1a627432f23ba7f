"""Random values for RULER's tasks: adjective-noun word keys, 7-digit numbers, UUIDs, and the
plain English vocabulary of the common-words task.

RULER draws words from the ``wonderwords`` lists; kvstack ships its own lists of the same kind
(common English adjectives and concrete nouns) so nothing is downloaded, and harvests a larger
vocabulary for word-list tasks from the essays it already has.
"""

from __future__ import annotations

import random
import re
import uuid
from functools import lru_cache

ADJECTIVES = (
    "abundant", "agreeable", "ancient", "anxious", "awesome", "bashful", "bitter", "brave", "breezy", "bright",
    "bumpy", "calm", "careful", "cheerful", "chilly", "clever", "clumsy", "cold", "colossal", "crooked",
    "cuddly", "curious", "damp", "dapper", "delicate", "dizzy", "eager", "elegant", "empty", "fancy",
    "fierce", "filthy", "fluffy", "foolish", "fragile", "frantic", "gentle", "giant", "gifted", "glossy",
    "grumpy", "handsome", "hollow", "humble", "hungry", "icy", "jolly", "juicy", "lazy", "little",
    "lively", "lonely", "loud", "lucky", "magnificent", "massive", "mellow", "messy", "mighty", "modern",
    "muddy", "narrow", "nervous", "noisy", "odd", "orange", "plain", "polite", "proud", "quaint",
    "quick", "quiet", "rapid", "rough", "rustic", "scary", "shaggy", "shiny", "silent", "silly",
    "slimy", "sour", "sparkling", "spicy", "steady", "sticky", "stormy", "sturdy", "swift", "tame",
    "tender", "thirsty", "tidy", "tiny", "upbeat", "vast", "wacky", "wild", "witty", "zany",
)
NOUNS = (
    "accordion", "airport", "apron", "bakery", "balloon", "bandana", "barn", "bicycle", "blender", "boat",
    "bonnet", "bucket", "bulldozer", "cabinet", "camera", "canoe", "carpet", "castle", "cathedral", "cello",
    "chimney", "cloud", "coconut", "cookie", "cottage", "crayon", "cupboard", "curtain", "dinosaur", "dolphin",
    "doorbell", "dragonfly", "drum", "elephant", "envelope", "factory", "ferry", "fiddle", "fountain", "garage",
    "giraffe", "glacier", "gondola", "guitar", "hamster", "harbor", "helicopter", "hippo", "jellyfish", "kangaroo",
    "kayak", "kettle", "lagoon", "lantern", "lemonade", "library", "lighthouse", "lobster", "magnet", "mailbox",
    "meadow", "microscope", "mongoose", "muffin", "napkin", "notebook", "orchard", "ostrich", "pancake", "parrot",
    "peacock", "pelican", "piano", "pillow", "platypus", "pumpkin", "quilt", "raccoon", "radio", "rainbow",
    "robot", "rocket", "saxophone", "scarecrow", "scooter", "seashell", "skyscraper", "snowman", "spaceship",
    "squirrel", "stadium", "submarine", "sunflower", "teapot", "tractor", "trombone", "tugboat", "umbrella",
    "volcano", "walrus", "waterfall", "windmill", "zeppelin",
)
_WORD = re.compile(r"\b[a-z]{4,10}\b")


def word_key(rng: random.Random) -> str:
    """An ``adjective-noun`` key, as RULER's ``words`` needles."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def uuid_value(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def value(kind: str, rng: random.Random) -> str:
    """A random ``words`` / ``numbers`` / ``uuids`` value (RULER's needle types)."""
    return {"words": word_key, "numbers": number, "uuids": uuid_value}[kind](rng)


def unique(kind: str, rng: random.Random, taken: set[str]) -> str:
    while True:
        v = value(kind, rng)
        if v not in taken:
            taken.add(v)
            return v


@lru_cache(maxsize=1)
def english_words() -> tuple[str, ...]:
    """Distinct lower-case words of 4-10 letters from the haystack essays, sorted (a few thousand)."""
    from kvstack.eval.tasks.haystack import _source_text

    return tuple(sorted(set(_WORD.findall(_source_text("haystack")))))

"""The evaluation's own words and sentence templates, in one place.

Kept apart so a test can prove they are disjoint from the templates kvstack's retrieval model
is trained on (``training/templates.py``): a model must not be scored on phrasings
it was drilled on.
"""

from __future__ import annotations

# Needle keys are "<colour>-<object>" pairs: 24 x 24 = 576 keys.
KEY_COLOURS = (
    "amber", "cobalt", "crimson", "ivory", "jade", "ochre", "russet", "saffron", "slate", "teal",
    "umber", "violet", "copper", "indigo", "maroon", "olive", "pewter", "scarlet", "sepia", "tawny",
    "cerulean", "fuchsia", "mauve", "vermilion",
)
KEY_OBJECTS = (
    "lantern", "compass", "anvil", "harp", "kettle", "ladder", "mirror", "quill", "saddle", "thimble",
    "trumpet", "violin", "beacon", "chisel", "goblet", "hammock", "locket", "mitten", "pendulum", "sextant",
    "spindle", "telescope", "trowel", "whistle",
)

# Fictional people, towns and rivers for two-hop questions (no real-world prior helps).
PEOPLE = (
    "Odile Varnacott", "Tibor Heskeworth", "Marisol Quenby", "Ansel Drummike", "Perpetua Lowish",
    "Casimir Ondreth", "Yolande Bricklow", "Lazarus Fenmire", "Henrike Solvane", "Barnaby Ixworth",
    "Rosalind Cathmere", "Evander Pollick", "Ingrid Tallowmere", "Leopold Gaskin", "Mirela Obstwick",
    "Quentin Harrowgate", "Sabine Vellacourt", "Theodric Amblecote", "Ursula Penhallow", "Zoltan Marchbank",
)
TOWNS = (
    "Brelford", "Quenmoor", "Tassingham", "Vorlick", "Ashcombe Vale", "Dunmarrow", "Felstow", "Grimsbury",
    "Hollinwick", "Kestrelby", "Lowenholt", "Morrowdene", "Nettlecombe", "Orlinbury", "Pellingford",
    "Ravensholt", "Saltmarsh End", "Thornwick", "Wendlebury", "Yarrowfield",
)
RIVERS = (
    "Velta", "Ombray", "Culvane", "Drisk", "Essery", "Fallow", "Gantle", "Hesk", "Irvane", "Jorra",
    "Kelder", "Lurn", "Maddock", "Nessary", "Orrin", "Pyle", "Quarrow", "Rusk", "Sellow", "Tarne",
)

# Common-words extraction draws from these (plain, single-token-ish English nouns).
CWE_WORDS = (
    "apple", "basket", "candle", "dolphin", "engine", "feather", "garden", "hammer", "island", "jacket",
    "kitten", "lemon", "meadow", "needle", "orange", "pepper", "quilt", "rabbit", "saddle", "tomato",
    "umbrella", "valley", "window", "yogurt", "zebra", "anchor", "bottle", "cactus", "desert", "eagle",
    "forest", "guitar", "helmet", "iguana", "jungle", "kayak", "ladder", "magnet", "noodle", "oyster",
    "pillow", "rocket", "salmon", "tunnel", "violin", "walnut", "blanket", "carrot", "donkey", "falcon",
    "glacier", "harbor", "igloo", "jigsaw", "kernel", "lobster", "mitten", "nutmeg", "orchid", "parrot",
    "raisin", "spider", "turnip", "velvet", "wizard", "bucket", "cereal", "dragon", "fossil", "goose",
    "hazel", "insect", "juniper", "koala", "lentil", "marble", "nickel", "otter", "pebble", "radish",
)

# Filler sentences for the passkey task (repetitive noise, as in the original passkey test).
PASSKEY_FILLER = (
    "The tide rolls in over the flat grey sand.",
    "The tide slips back out toward the far buoys.",
    "Gulls circle the harbour wall and settle again.",
    "A fishing boat idles by the pier with its engine ticking.",
)

# Sentence templates (format fields in braces).
NEEDLE = "Archive note: the registry number filed under '{key}' reads {value}."
NEEDLE_QUESTION = "What is the registry number filed under '{key}' in the text above?"
NEEDLE_PREFIX = "The registry number filed under '{key}' reads"
MULTIVALUE_QUESTION = (
    "Several registry numbers are filed under '{key}' in the text above. List every one of them."
)
MULTIVALUE_PREFIX = "The registry numbers filed under '{key}' are"
MULTIQUERY_QUESTION = "What are the registry numbers filed under {keys} in the text above?"
MULTIQUERY_PREFIX = "The registry numbers filed under {keys} read"
PASSKEY_NEEDLE = "The pass key is {value}. Remember it. {value} is the pass key."
PASSKEY_QUESTION = "What is the pass key mentioned in the text above?"
PASSKEY_PREFIX = "The pass key mentioned in the text is"
VAR_ASSIGN_VALUE = "Ledger entry: slot {name} is set to {value}."
VAR_ASSIGN_COPY = "Ledger entry: slot {name} is set to whatever slot {source} holds."
VAR_QUESTION = (
    "Following the ledger entries in the text above, which slots end up set to {value}? Give all of their names."
)
VAR_PREFIX = "The slots set to {value} are"
CWE_QUESTION = (
    "Above is a numbered list of words. Which {k} words occur most often in the list? Give the {k} words."
)
CWE_PREFIX = "The {k} most frequent words are"
HOP_WORKSHOP = "{person} keeps a small workshop in the town of {town}."
HOP_RIVER = "The town of {town} lies on the banks of the river {river}."
HOP_QUESTION = "On which river lies the town where {person} keeps a workshop?"
HOP_PREFIX = "The river is the"
HOP_POINTER = "Archive note: the entry '{key}' now defers to the entry '{target}'."
HOP_NUM_QUESTION = "Which registry number does the entry '{key}' lead to in the text above?"
HOP_NUM_PREFIX = "Following '{key}', the registry number reads"
QA_DOCUMENT = "Document {n}: {text}"
QA_QUESTION = "Answer from the documents above in a few words. {question}"

TEMPLATES = (
    NEEDLE, NEEDLE_QUESTION, NEEDLE_PREFIX, MULTIVALUE_QUESTION, MULTIVALUE_PREFIX, MULTIQUERY_QUESTION,
    MULTIQUERY_PREFIX, PASSKEY_NEEDLE, PASSKEY_QUESTION, PASSKEY_PREFIX, VAR_ASSIGN_VALUE, VAR_ASSIGN_COPY,
    VAR_QUESTION, VAR_PREFIX, CWE_QUESTION, CWE_PREFIX, HOP_WORKSHOP, HOP_RIVER, HOP_QUESTION, HOP_PREFIX,
    HOP_POINTER, HOP_NUM_QUESTION, HOP_NUM_PREFIX, QA_DOCUMENT, QA_QUESTION,
)
VOCABULARIES = {
    "key_colours": KEY_COLOURS, "key_objects": KEY_OBJECTS, "people": PEOPLE, "towns": TOWNS, "rivers": RIVERS,
}

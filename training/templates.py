"""Every word list and sentence template the retrieval model is TRAINED on, in one importable place.

Why one file: the evaluation harness must ask with phrasings the model never saw, so its test
imports this module and checks that none of its templates appear here (:func:`training_strings`).
The ``HELDOUT_*`` lists are ours too, but never used for training: they measure how retrieval
generalises to unseen sentence frames, question frames, attributes and names.

Placeholders: ``{E}`` entity (the key), ``{A}`` attribute, ``{As}`` attribute plural, ``{V}`` value,
``{X}``/``{Y}`` variable names, ``{Q}`` question, ``{E2}`` a second entity.
Deliberately absent (kept for evaluation): RULER's "special magic number/uuid", "pass key", "VAR X = ",
its grass/sky/sun filler, and NIAH's San Francisco sandwich needle.
"""

from __future__ import annotations

from training import frame_grammar

FIRST_NAMES = [
    "Abel", "Adriana", "Agnes", "Alder", "Alma", "Ambrose", "Anika", "Arlo", "Astrid", "Beatrix", "Bertram",
    "Blythe", "Bruno", "Caspian", "Cecily", "Clement", "Cordelia", "Cyril", "Dagny", "Dashiell", "Delphine",
    "Desmond", "Dorian", "Edda", "Elio", "Elspeth", "Emrys", "Esme", "Fabian", "Fenella", "Florin", "Freya",
    "Gideon", "Greta", "Gulliver", "Hamish", "Harriet", "Hector", "Hedda", "Ignatius", "Ilse", "Imogen", "Isidore",
    "Jasper", "Jolene", "Juno", "Kasimir", "Katja", "Lazlo", "Leonie", "Linus", "Lorcan", "Lucinda", "Magnus",
    "Matthias", "Nadia", "Nikolai", "Noor", "Octavia", "Orson", "Pascal", "Petra", "Philippa", "Rafferty", "Rufus",
    "Saoirse", "Sebastian", "Sigrid", "Solveig", "Tamsin", "Thaddeus", "Thea", "Tobias", "Ulrich", "Valentina",
    "Vesna", "Wendell", "Wilhelmina", "Xavier", "Yara", "Yusuf", "Zelda", "Oswin", "Priya", "Ravi", "Mei", "Kenji",
    "Amara", "Tariq", "Lior", "Anouk", "Bram", "Cosima",
]

LAST_NAMES = [
    "Abernathy", "Achterberg", "Albescu", "Alcott", "Ashdown", "Balogun", "Barrowcliffe", "Beaumont", "Birchwood",
    "Blackthorn", "Bramhall", "Brennan", "Castellanos", "Chadwick", "Corrigan", "Dalgliesh", "Delacroix", "Dunmore",
    "Eastwick", "Elsworth", "Falkenrath", "Fairweather", "Fenwick", "Fitzroy", "Galloway", "Garrowby", "Gilchrist",
    "Greenhalgh", "Hadley", "Halloran", "Hargreave", "Holloway", "Ibarra", "Ingleby", "Jablonski", "Kavanagh",
    "Kettering", "Kowalczyk", "Lacroix", "Langley", "Lindqvist", "Lockhart", "Maddox", "Marchetti", "Merriweather",
    "Montague", "Nakamura", "Northcott", "Okonkwo", "Oyelaran", "Pemberton", "Petrakis", "Quigley", "Radcliffe",
    "Ravensworth", "Rossetti", "Salazar", "Sandoval", "Sheffield", "Strickland", "Szabo", "Tanaka", "Thornbury",
    "Torvalds", "Underhill", "Valdivia", "Vanterpool", "Wainwright", "Westbrook", "Whitlock", "Yardley", "Zamora",
    "Zielinski", "Achebe", "Brightwater", "Coldwell", "Drummond", "Estrada", "Haverford", "Moreau",
]

# Pseudo-word syllables: endless fresh keys, so the model must copy, not memorise.
SYLLABLES = [
    "ba", "bel", "bro", "ca", "cor", "da", "del", "dor", "fa", "fen", "gal", "gri", "ha", "hol", "ka", "kel",
    "la", "lin", "lo", "ma", "mer", "mo", "na", "nor", "pa", "pel", "qui", "ra", "ren", "ro", "sa", "sel",
    "so", "ta", "tor", "tu", "va", "vel", "wi", "xa", "yo", "za", "zen", "bri", "chu", "dra", "fro", "ske",
]

ADJECTIVES = [
    "ancient", "brass", "brittle", "bronze", "careful", "crooked", "dusty", "eastern", "emerald", "faded", "frozen",
    "gentle", "gilded", "granite", "hollow", "humble", "iron", "jagged", "lonely", "lucky", "midnight", "misty",
    "narrow", "northern", "oaken", "painted", "pale", "quiet", "restless", "rusty", "silent", "silver", "slender",
    "southern", "stubborn", "sunken", "tiny", "wandering", "western", "wicker", "wooden", "young",
]

NOUNS = [
    "badger", "barge", "bicycle", "bridge", "cabinet", "canal", "carriage", "castle", "cellar", "chapel",
    "clocktower", "cottage", "crane", "depot", "drawbridge", "ferry", "foundry", "fountain", "gate", "glasshouse",
    "greenhouse", "hangar", "heron", "kiln", "library", "lighthouse", "locomotive", "loom", "market", "mill",
    "monastery", "observatory", "orchard", "pavilion", "quarry", "raven", "satellite", "schooner", "sawmill",
    "signal box", "stable", "submarine", "tannery", "theatre", "tram", "turbine", "vault", "vineyard", "warehouse",
    "weathervane", "windmill", "zeppelin",
]

CODE_PREFIXES = ["unit", "site", "batch", "crate", "case", "lot", "cell", "dock", "ward", "bay", "lane", "gate"]

# Attributes grouped by the kind of value they hold. Plurals are the attribute plus "s".
ATTRIBUTES = {
    "num": [
        "locker number", "badge number", "room number", "extension", "account number", "order number",
        "invoice number", "ticket number", "seat number", "shelf number", "cabin number", "pin",
        "access code", "combination", "membership number", "parcel number", "house number", "platform number",
        "frequency", "batch count", "lucky number", "reference number", "serial number", "bus number",
        "table number", "gate code", "door code", "jersey number", "page number", "postcode",
    ],
    "word": [
        "password", "favourite colour", "favourite fruit", "code word", "nickname", "pet's name",
        "home town", "favourite animal", "secret word", "signal word", "motto word", "call sign",
        "favourite tree", "lucky charm", "favourite gemstone", "watchword", "spirit animal", "team name",
    ],
    "code": [
        "licence key", "booking reference", "tracking code", "voucher code", "product key", "serial code",
        "confirmation code", "claim ticket", "part number", "model code", "token", "cipher key",
    ],
}

VALUE_WORDS = [
    "amethyst", "apricot", "aquamarine", "avocado", "azalea", "banyan", "basalt", "bergamot", "blueberry",
    "bluebell", "buttercup", "cardamom", "cedar", "chamomile", "cinnabar", "citrine", "clementine", "clover",
    "coral", "cormorant", "cranberry", "cypress", "daffodil", "dahlia", "damson", "elderberry", "falconet",
    "fennel", "flamingo", "foxglove", "gannet", "gardenia", "garnet", "gazelle", "gooseberry", "hawthorn",
    "hedgehog", "heliotrope", "hibiscus", "ibis", "jackal", "jacaranda", "kestrel", "kingfisher", "kiwi", "kumquat",
    "lapwing", "larch", "lavender", "lemur", "lilac", "linden", "lynx", "magnolia", "malachite", "mandarin",
    "mango", "marigold", "marmot", "marten", "mulberry", "narwhal", "nectarine", "obsidian", "ocelot", "onyx",
    "opal", "osprey", "papaya", "peacock", "pelican", "peony", "peridot", "persimmon", "pistachio", "plover",
    "pomegranate", "poppy", "puffin", "quail", "quince", "raspberry", "redwood", "rhubarb", "rowan", "sapphire",
    "sequoia", "sorrel", "sparrow", "starling", "sycamore", "tamarind", "tangerine", "tapir", "thistle", "topaz",
    "tulip", "turquoise", "walrus", "willow", "wisteria", "wombat", "yarrow", "zinnia", "heron", "badger",
    "chestnut", "fig", "lychee", "alpaca", "bison", "cobra", "ermine",
]

# Needle frames: how a fact is stated. Dozens of families, each combined with every attribute,
# entity kind and value kind, so no single surface form is what the model learns to look for.
NEEDLE_FRAMES = [
    "The {A} of {E} is {V}.",
    "{E}'s {A} is {V}.",
    "{E} has the {A} {V}.",
    "For {E}, the {A} is {V}.",
    "{V} is the {A} of {E}.",
    "Please note that the {A} assigned to {E} is {V}.",
    "Record: {E} / {A} / {V}",
    "[{E}] {A}: {V}",
    "It turns out the {A} for {E} was {V}.",
    "Our files list {V} as the {A} of {E}.",
    "According to the registry, {E} uses the {A} {V}.",
    "{E} ({A}): {V}.",
    "Memo: the {A} belonging to {E} = {V}.",
    "If anyone asks, the {A} of {E} is {V}.",
    "{E} was given {V} as the {A}.",
    "The {A} that {E} chose is {V}.",
    "\"My {A} is {V},\" said {E}.",
    "{{\"name\": \"{E}\", \"{A}\": \"{V}\"}}",
    "Don't forget: {E} -> {A} {V}.",
    "Among other things, {E} is known for the {A} {V}.",
    "- {A} ({E}): {V}",
    "Update: {E} changed the {A} to {V}.",
    "The {A} on file for {E} reads {V}.",
    "{E} keeps the {A} {V} written down.",
    "Entry for {E}: {A} = {V}.",
    "We were told that {E}'s {A} is {V}.",
    "Officially, {V} serves as the {A} for {E}.",
    "{E} | {A} | {V}",
    "Write this down: the {A} for {E} is {V}.",
    "A note pinned to the wall said the {A} of {E} was {V}.",
    "In the ledger, {E} appears with the {A} {V}.",
    "{E} -- {A}: {V}",
    "The {A} for {E}? It is {V}.",
    "By the way, {E} picked {V} for the {A}.",
    "Set the {A} of {E} to {V}.",
]

# Question frames for one fact; asked after the context inside a question/answer format below.
QUESTION_FRAMES = [
    "What is the {A} of {E}?",
    "What is {E}'s {A}?",
    "Which {A} does {E} have?",
    "What {A} was assigned to {E}?",
    "Tell me the {A} for {E}.",
    "Find the {A} of {E}.",
    "{E}'s {A}?",
    "What was the {A} for {E} in the text?",
    "Look up the {A} of {E}.",
    "According to the document, what is the {A} of {E}?",
    "Give the {A} associated with {E}.",
    "Recall the {A} that belongs to {E}.",
    "What does the text say {E}'s {A} is?",
    "Name the {A} of {E}.",
    "The {A} of {E} is what?",
    "Which value is the {A} of {E}?",
    "Do you remember the {A} of {E}?",
    "Report the {A} of {E}.",
    "Retrieve {E}'s {A}.",
    "I need the {A} for {E}. What is it?",
    "What {A} goes with {E}?",
    "{A} of {E}?",
]

# Reverse lookup: which entity holds a value.
REVERSE_QUESTION_FRAMES = [
    "Whose {A} is {V}?",
    "Who has the {A} {V}?",
    "Which name goes with the {A} {V}?",
    "The {A} {V} belongs to whom?",
]

# Several values for one key (multi-value): extra frames, plus every needle frame.
MULTI_VALUE_FRAMES = [
    "{E} has another {A}: {V}.",
    "Also on record for {E}: {A} {V}.",
    "An additional {A} of {E} is {V}.",
    "{E} added {V} to the list of {As}.",
]
MULTI_VALUE_QUESTIONS = [
    "List all the {As} of {E}.",
    "What are the {As} of {E}?",
    "Which {As} does {E} have?",
    "Give every {A} recorded for {E}.",
    "Name each {A} of {E}.",
]

# Several keys asked at once (multi-query); {Es} is "X, Y and Z", the answer lists values in that order.
MULTI_QUERY_QUESTIONS = [
    "What are the {As} of {Es}?",
    "Give the {As} for {Es}, in that order.",
    "List the {As} of {Es}.",
    "Which {As} do {Es} have, respectively?",
]

# Variable tracking: a value enters one variable and is copied along a chain.
ASSIGN_FRAMES = ["let {X} = {V}.", "{X} := {V}", "set {X} to {V}.", "{X} = {V};", "assign {V} to {X}.", "{X} <- {V}"]
COPY_FRAMES = ["let {Y} = {X}.", "{Y} := {X}", "set {Y} to {X}.", "{Y} = {X};", "copy {X} into {Y}.", "{Y} <- {X}"]
TRACK_QUESTIONS = [
    "Which variables end up holding {V}?",
    "Name every variable whose value is {V}.",
    "List the variables equal to {V}.",
    "Which names carry the value {V}?",
]
TRACK_VALUE_QUESTIONS = ["What is the value of {Y}?", "What does {Y} hold?", "{Y} equals what?"]

# Multi-hop: the asked entity points to another entity whose value is stated.
HOP_FRAMES = [
    "{E}'s {A} is the same as {E2}'s.",
    "{E} shares the {A} of {E2}.",
    "The {A} of {E} matches that of {E2}.",
    "{E} copied the {A} from {E2}.",
    "{E} uses whatever {A} {E2} uses.",
]

# Answer prefixes: sometimes the answer restates the question before the value ("... is 4821"), as
# evaluation harnesses often prime it. Keyed by the kind of answer.
ANSWER_PREFIXES = {
    "fact": ["The {A} of {E} is", "{E}'s {A} is", "For {E}, the {A} is", "The {A} given for {E} is", "It is"],
    "values": ["The {As} of {E} are", "{E}'s {As} are", "They are"],
    "queries": ["In that order, they are", "The {As} are, in order,"],
    "names": ["The variables holding {V} are", "Holding {V}:"],
    "value_of": ["{Y} holds", "The value of {Y} is"],
    "owner": ["It belongs to", "That {A} is held by"],
}

# Question/answer wrappers: (before the question, between question and answer). The answer follows
# after one space. The first is the format kvstack.prompting.split_prompt uses for base models.
QA_FORMATS = [
    ("\n\nQuestion: ", "\nAnswer:"),
    ("\n\nQ: ", "\nA:"),
    ("\n\nquestion: ", "\nanswer:"),
    ("\n\nQuery: ", "\nResult:"),
    ("\n\nUser: ", "\nAssistant:"),
    ("\n\n", "\nReply:"),
    ("\n\nQUESTION: ", "\nANSWER:"),
    ("\n\nAsk: ", "\nResponse:"),
]

# Filler for synthetic (non-text) haystacks: deliberately dull, repeated sentences.
FILLER_SENTENCES = [
    "The kettle hums on the stove.", "A cart rolls down the lane.", "Rain taps on the window.",
    "The clock in the hall ticks.", "Someone sweeps the porch.", "Bread cools on the rack.",
    "A dog barks far away.", "The river keeps moving.", "Leaves drift across the yard.",
    "The lamp stays lit all night.", "A bell rings at noon.", "Boats rock in the harbour.",
    "The wind turns the mill.", "Chalk dust settles on the desk.", "A train passes at dusk.",
    "The market opens early.", "Smoke rises from the chimney.", "The gate creaks open.",
    "Pages turn in the library.", "Frost covers the field.",
]

# ---- held out: never used for training, only for our own validation ----
HELDOUT_NEEDLE_FRAMES = [
    "Somewhere in the notes it says {E} carries the {A} {V}.",
    "Keep in mind: {V} = {A} of {E}.",
    "<{E}> {A} := {V}",
    "The clerk wrote down {V} next to {E} under {A}.",
    "As it happens, {E} goes by the {A} {V}.",
    "Fact sheet -- {A} of {E}: {V}.",
]
HELDOUT_QUESTION_FRAMES = [
    "Could you state which {A} corresponds to {E}?",
    "In the passage above, {E} is linked to which {A}?",
    "Quick check: {A} for {E}?",
    "Search the text: what {A} is listed for {E}?",
]
HELDOUT_ATTRIBUTES = {
    "num": ["desk number", "mailbox number", "permit number", "cargo count", "vault number"],
    "word": ["favourite flower", "guild name", "river name"],
    "code": ["passcode", "claim code", "access token"],
}
HELDOUT_FIRST_NAMES = ["Anselm", "Brigid", "Corwin", "Delia", "Fiora", "Gaspard", "Hilde", "Ione", "Jorah"]
HELDOUT_LAST_NAMES = ["Ashgrove", "Brackenbury", "Cullingford", "Dewhurst", "Erskine", "Fothergill", "Gresham"]
HELDOUT_VALUE_WORDS = ["aubergine", "cassowary", "gentian", "kohlrabi", "mangosteen", "nasturtium", "tourmaline"]
HELDOUT_ATTRIBUTE_SET = frozenset(a for attrs in HELDOUT_ATTRIBUTES.values() for a in attrs)
HELDOUT_QA_FORMATS = [("\n\nQuestion: ", "\nAnswer:")]  # the house format, with unseen frames inside


# Thousands of procedurally generated frames (``frame_grammar``), drawn once with fixed seeds.
GENERATED_NEEDLE_FRAMES = frame_grammar.needle_frames()
GENERATED_QUESTION_FRAMES = frame_grammar.question_frames()
ATTRIBUTE_HEADS = frame_grammar.ATTRIBUTE_HEADS

_TEMPLATE_GROUPS = (
    NEEDLE_FRAMES, QUESTION_FRAMES, REVERSE_QUESTION_FRAMES, MULTI_VALUE_FRAMES, MULTI_VALUE_QUESTIONS,
    MULTI_QUERY_QUESTIONS, ASSIGN_FRAMES, COPY_FRAMES, TRACK_QUESTIONS, TRACK_VALUE_QUESTIONS, HOP_FRAMES,
    FILLER_SENTENCES, *ANSWER_PREFIXES.values(), GENERATED_NEEDLE_FRAMES, GENERATED_QUESTION_FRAMES,
)


def training_templates() -> set[str]:
    """The sentence and question frames (with placeholders) the model is trained on."""
    out: set[str] = set()
    for group in _TEMPLATE_GROUPS:
        out.update(group)
    return out


def training_strings() -> set[str]:
    """Every template and word the model is trained on (the evaluation side checks disjointness)."""
    out = training_templates()
    for group in (FIRST_NAMES, LAST_NAMES, ADJECTIVES, NOUNS, CODE_PREFIXES, VALUE_WORDS):
        out.update(group)
    for attrs in ATTRIBUTES.values():
        out.update(attrs)
    for before, between in QA_FORMATS:
        out.update((before.strip(), between.strip()))
    out.discard("")
    return out

"""RULER's published wording (Hsieh et al. 2024, NVIDIA/RULER ``synthetic/constants.py``), one
constant per piece, so every RULER task here speaks exactly as the benchmark does.

A RULER prompt is ``template.format(context=..., query=...)`` followed by an answer prefix.
kvstack splits it at the end of the context: everything up to and including the haystack is
the cacheable context, the question after it is what a question-aware recipe may see.
"""

from __future__ import annotations

# needle in a haystack; the singular forms are RULER's own substitution for one asked value
NIAH_INTRO = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards."
)
NIAH_QUESTION = "What are all the special magic {kind} for {query} mentioned in the provided text?"
NIAH_PREFIX = "The special magic {kind} for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


def singular(text: str) -> str:
    """RULER's rewording when exactly one value is asked for ("Some ... are" -> "A ... is")."""
    for a, b in (("Some", "A"), ("are all", "is"), ("are", "is")):
        text = text.replace(a, b)
    return text


VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text."
VT_QUESTION = "Question: Find all variables that are assigned the value {query} in the text above."
# "assgined" is RULER's spelling; kept so prompts match the benchmark token for token
VT_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assgined the value {query}, they are:"
)
VT_FIRST = "VAR {name} = {value}"
VT_COPY = "VAR {name} = VAR {source}"

CWE_INTRO = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often."
)
CWE_QUESTION = "Question: What are the 10 most common words in the above list?"
CWE_PREFIX = "Answer: The top 10 words that appear most often in the list are:"

FWE_INTRO = (
    "Read the following coded text and track the frequency of each coded word. Find the three most "
    "frequently appeared coded words."
)
FWE_QUESTION = (
    "Question: Do not provide any explanation. Please ignore the dots '....'. What are the three most "
    "frequently appeared words in the above coded text?"
)
FWE_PREFIX = "Answer: According to the coded text above, the three most frequently appeared words are:"

QA_INSTRUCTION = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
)
QA_INTRO = QA_INSTRUCTION + "\n\nThe following are given documents."
QA_DOCUMENT = "Document {n}:\n{text}"
QA_QUESTION = QA_INSTRUCTION + "\n\nQuestion: {query}"
QA_PREFIX = "Answer:"

"""NSA task types: the step-1 prompt (instruction + one worked example) and the label probe.

A task fixes two things: how the model is asked for influential words (a chain-of-thought
worked example: reasoning, then the list), and the yes/no-style *probe* whose label log-prob
margin the fallback attribution and the ablation check measure.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.errors import UserError

# Function words: a list made of them says nothing about the task (filtered in step 1 unless a
# task keeps some, e.g. "not" for sentiment, "if"/"all" for logical reasoning).
STOPWORDS = frozenset(
    [
        "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any",
        "are", "aren't", "as", "at", "be", "because", "been", "before", "being", "below", "between",
        "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each",
        "else", "ever", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her",
        "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is",
        "isn't", "it", "it's", "its", "itself", "just", "let", "me", "more", "most", "much", "my",
        "myself", "neither", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or",
        "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should", "so",
        "some", "such", "than", "that", "that's", "the", "their", "theirs", "them", "themselves",
        "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until",
        "up", "upon", "us", "very", "was", "we", "were", "what", "when", "where", "which", "while",
        "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself", "yourselves",
        "'s", "'re", "'ve", "'ll", "'d", "n't"
    ]
)


# Datasets name the same answers differently (RTE: True/False, our probes: yes/no).
_LABEL_SYNONYMS = {"true": "yes", "false": "no", "entailment": "yes", "not_entailment": "no"}


@dataclass(frozen=True)
class TaskSpec:
    """Everything NSA needs to know about one task type."""

    name: str
    instruction: str  # the step-1 question, ending with the list format the parser expects
    example_text: str  # the worked example shown before the user's text
    example_reasoning: str  # one short chain-of-thought line for the example
    example_words: tuple[str, ...]  # the example's answer (also used to detect echoes)
    probe: str  # completion prompt around {text}; the next token decides the label
    label_words: tuple[str, str]  # continuations compared by the margin, e.g. (" positive", " negative")
    keep_words: frozenset[str] = frozenset()  # stopwords that do carry this task's signal
    noise_words: frozenset[str] = frozenset()  # content words that never carry this task's signal
    names_are_noise: bool = True  # proper names carry no sentiment, but do answer questions

    def label_index(self, label_text: str | None) -> int | None:
        """Index into ``label_words`` of a gold label such as 'positive' (None if it is not one)."""
        if label_text is None:
            return None
        wanted = str(label_text).strip().lower()
        wanted = _LABEL_SYNONYMS.get(wanted, wanted)
        for index, word in enumerate(self.label_words):
            if word.strip().lower() == wanted:
                return index
        return None

    def is_stopword(self, word: str) -> bool:
        """A function word (or task noise word) that says nothing about this task."""
        lowered = word.lower()
        if lowered in self.noise_words:
            return True
        return lowered in STOPWORDS and lowered not in self.keep_words


def _instruction(what: str) -> str:
    return (
        f"Below is a text. Identify the words that are most relevant to {what} "
        "and organize them like: [word1,word2,...]"
    )


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="sentiment",
            instruction=_instruction("determining its sentiment"),
            example_text="The plot was dull and predictable, although the soundtrack was gorgeous.",
            example_reasoning='"dull" and "predictable" are negative, "gorgeous" is positive.',
            example_words=("dull", "predictable", "gorgeous"),
            probe="Review: {text}\nIs this review positive or negative? Answer:",
            label_words=(" positive", " negative"),
            keep_words=frozenset({"not", "no", "nor", "n't", "never", "too"}),
            # The subject of every review: naming it is not a judgement.
            noise_words=frozenset({"film", "movie", "story", "one", "thing", "things", "something"}),
        ),
        TaskSpec(
            name="question_answering",
            instruction=_instruction("answering the question"),
            example_text="Passage: Mercury is the closest planet to the Sun. "
            "Question: is mercury the closest planet to the sun?",
            example_reasoning='the question asks about "closest", the passage says "Mercury" is "closest".',
            example_words=("Mercury", "closest", "Sun"),
            probe="{text}\nIs the answer to the question yes or no? Answer:",
            label_words=(" yes", " no"),
            keep_words=frozenset({"not", "no", "never"}),
            names_are_noise=False,
        ),
        TaskSpec(
            name="semantic_similarity",
            instruction=_instruction("deciding whether the two sentences mean the same"),
            example_text="Sentence 1: The company bought the startup. "
            "Sentence 2: The startup was acquired by the company.",
            example_reasoning='"bought" and "acquired" say the same, "company" and "startup" appear in both.',
            example_words=("bought", "acquired", "company", "startup"),
            probe="{text}\nDo the two sentences mean the same thing? Answer:",
            label_words=(" yes", " no"),
            keep_words=frozenset({"not", "no", "never"}),
        ),
        TaskSpec(
            name="logical_reasoning",
            instruction=_instruction("deciding whether the conclusion follows"),
            example_text="All birds have feathers. A robin is a bird. So a robin has feathers.",
            example_reasoning='"All" and "birds" state the rule, "robin" is a "bird", so "feathers" follows.',
            example_words=("All", "birds", "robin", "feathers"),
            probe="{text}\nDoes the conclusion follow from the premises? Answer:",
            label_words=(" yes", " no"),
            keep_words=frozenset({"all", "if", "then", "not", "no", "some", "only", "because", "so"}),
            names_are_noise=False,
        ),
    )
}

_ALIASES = {"qa": "question_answering", "similarity": "semantic_similarity",
            "reasoning": "logical_reasoning", "logic": "logical_reasoning"}


def get_task(name: str) -> TaskSpec:
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in TASKS:
        raise UserError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[key]

"""``instruct``: short English instructions with constraints a program can check.

Eleven kinds of request, each with a canonical reply (the oracle) and a constraint that any
good reply meets (``verifiers.instruct``): greet someone; name N words of a category; answer
yes or no from stated facts (comparison chains); repeat a word N times; spell a word
backwards; count letters or words; say where someone lives from stated facts; write a
sentence in capitals; sort words alphabetically; pick the largest or smallest number; track
a count through a short story. Up to three modifiers can be added: reply in upper or lower
case, start with a given word, end with a given word, put the reply in quotes.

    Say hello to Anna. Use capitals. End with done.  ->  HELLO ANNA, DONE

Levels (simultaneous constraints, and the size of the request):
    1: the request alone, small
    2: one modifier, small
    3: one modifier, middle
    4: two modifiers, middle
    5: three modifiers, large
Sizes small / middle / large: 2-3 / 3-4 / 4-5 items to name, 2-3 / 3-4 / 4-5 repeats, 3 / 4 / 5
words to sort, 2 / 3 / 4 numbers to compare, 1 / 2 / 3 changes in a story, a one-fact /
two-fact comparison chain (two facts at large too), one fact / two facts / a hop through
"X lives with Y" for where someone lives, short / middle / long words and sentences.
Prompts are at most 128 characters and replies at most 60; longer draws are redrawn, which
makes the longest requests rarer at level 5 (measured: stories 86%, yes/no 90% of their share).
No tool applies.

``sentences(rng, n)`` gives plain English sentences from the same vocabulary, for language
model training.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from r3m.envs.base import Instance, TaskFamily
from r3m.envs.text_env import TextTaskEnv
from r3m.verifiers import Verdict
from r3m.verifiers.instruct import NUMBER_WORDS, verify, words

MAX_PROMPT = 128
MAX_REPLY = 60
NAMES = ("Anna Tom Ben Sara Mia Leo Max Eva Sam Lily Jack Emma Noah Zoe Omar Ivy Paul Rosa Ken Nina").split()
CITIES = ("Paris Rome Oslo Cairo Lima Tokyo Delhi Madrid Berlin Dublin Vienna Prague Lisbon Athens "
          "Seoul").split()
CATEGORIES = {
    "fruits": "apple pear plum fig lime mango peach grape lemon cherry melon kiwi".split(),
    "colors": "red blue green black white pink brown gray yellow orange purple".split(),
    "animals": "cat dog cow horse sheep fox bear wolf duck goat mouse lion".split(),
    "vegetables": "carrot potato onion pea bean leek corn cabbage pepper radish".split(),
}
WORDS = {  # by size: short, middle, long
    1: "cat sun map cup box pen hat star tree book lamp milk rain moon fish ship bird door".split(),
    2: "apple river house music water bread stone cloud train table chair garden window pencil".split(),
    3: "morning picture kitchen blanket mountain elephant sandwich treasure sunlight notebook".split(),
}
RELATIONS = ("taller", "older", "faster", "younger")
START_WORDS = ("sure", "okay", "well")
END_WORDS = ("done", "thanks", "bye")
MOD_PHRASES = {  # short on purpose: three of them must fit beside a request
    "upper": ("Use capitals.", "Reply in caps."),
    "lower": ("Use lowercase.", "Reply in lowercase."),
    "start": ("Start with {}.", "Begin with {}."),
    "end": ("End with {}.", "Finish with {}."),
    "quote": ("Use quotes.", "Quote your reply."),
}


class Level(NamedTuple):
    mods: int
    size: int


LEVELS = {1: Level(0, 1), 2: Level(1, 1), 3: Level(1, 2), 4: Level(2, 2), 5: Level(3, 3)}


class Task(NamedTuple):
    prompt: str
    content: dict[str, Any]  # a content check of verifiers.instruct
    reply: str  # the canonical reply before modifiers, without final punctuation
    mods: tuple[dict[str, Any], ...] = ()  # modifiers the request itself implies


def _pick(rng: np.random.Generator, options, k: int | None = None):
    if k is None:
        return options[int(rng.integers(len(options)))]
    return [options[int(i)] for i in rng.choice(len(options), size=k, replace=False)]


# -- sentences -------------------------------------------------------------------------------
_ADJECTIVES = "small big young quiet happy brown little lazy clever tiny".split()
_PLACES = "park garden market school forest field".split()
_PETS = "cat dog fox bird horse duck rabbit goat".split()


def sentence(rng: np.random.Generator) -> str:
    """One plain English sentence, e.g. "The lazy fox walks to the park."."""
    a, b = _pick(rng, NAMES, 2)
    adj, place, pet = _pick(rng, _ADJECTIVES), _pick(rng, _PLACES), _pick(rng, _PETS)
    fruit, city, n = _pick(rng, CATEGORIES["fruits"]), _pick(rng, CITIES), int(rng.integers(2, 10))
    templates = (
        f"The {adj} {pet} {_pick(rng, ('walks', 'runs', 'goes'))} to the {place}.",
        f"{a} sees a {adj} {pet} in the {place}.",
        f"{a} and {b} {_pick(rng, ('walk', 'run', 'go'))} to the {place}.",
        f"{a} has {NUMBER_WORDS[n]} {_plural(fruit)}.",
        f"{a} lives in {city}.",
        f"{a} is {_pick(rng, RELATIONS)} than {b}.",
        f"{a} reads a book in the {place} with {b}.",
        f"The {_pick(rng, CATEGORIES['colors'])} {pet} sleeps in the {place}.",
        f"{a} gives {b} {_article(_pick(rng, CATEGORIES['colors']))} {_pick(rng, WORDS[1][4:8])}.",
    )
    return _pick(rng, templates)


def sentences(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` plain English sentences drawn from ``rng`` (for language model training)."""
    return [sentence(rng) for _ in range(n)]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(word: str) -> str:
    if word.endswith("y"):
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("ch", "sh", "o")) else "s")


# -- requests ----------------------------------------------------------------------------------
def greet(rng: np.random.Generator, size: int) -> Task:
    verb = _pick(rng, ("hello", "goodbye"))
    who = " and ".join(_pick(rng, NAMES, 1 if size == 1 else 2))
    return Task(f"Say {verb} to {who}.", {"check": "words", "words": words(f"{verb} {who}")}, f"{verb} {who}")


def list_items(rng: np.random.Generator, size: int) -> Task:
    n = int(rng.integers(size + 1, size + 3))
    category = _pick(rng, sorted(CATEGORIES))
    pool = CATEGORIES[category]
    return Task(f"Name {NUMBER_WORDS[n]} {category}, separated by commas.",
                {"check": "items", "n": n, "pool": list(pool)}, ", ".join(_pick(rng, pool, n)))


def yes_no(rng: np.random.Generator, size: int) -> Task:
    """A chain ``p0 > p1 > ...`` stated in shuffled facts; the question needs ``hops`` of them."""
    hops = min(size, 2)
    relation, people = _pick(rng, RELATIONS), _pick(rng, NAMES, hops + 1)
    facts = [f"{people[i]} is {relation} than {people[i + 1]}." for i in rng.permutation(hops)]
    i, j = (0, hops) if rng.random() < 0.5 else (hops, 0)
    hint = "" if size == 3 else " Yes or no?"  # by level 5 the form is known, and room is short
    prompt = f"{' '.join(facts)} Is {people[i]} {relation} than {people[j]}?{hint}"
    answer = "yes" if i < j else "no"
    return Task(prompt, {"check": "words", "words": [answer]}, answer)


def repeat(rng: np.random.Generator, size: int) -> Task:
    n, word = int(rng.integers(size + 1, size + 3)), _pick(rng, WORDS[1])
    reply = " ".join([word] * n)
    return Task(f"Repeat the word {word} {NUMBER_WORDS[n]} times.", {"check": "words", "words": [word] * n},
                reply)


def backwards(rng: np.random.Generator, size: int) -> Task:
    word = _pick(rng, WORDS[size])
    return Task(f"Spell the word {word} backwards.", {"check": "words", "words": [word[::-1]]}, word[::-1])


def count(rng: np.random.Generator, size: int) -> Task:
    if rng.random() < 0.5:
        word = _pick(rng, WORDS[size])
        prompt, value = f"Count the letters in the word {word}.", len(word)
    else:
        text = _sized_sentence(rng, size)
        prompt, value = f"Count the words in this sentence: {text}", len(words(text))
    return Task(prompt, {"check": "number", "value": value}, str(value))


def lookup(rng: np.random.Generator, size: int) -> Task:
    """Where someone lives: one fact; two facts; or a hop through "lives with"."""
    people, cities = _pick(rng, NAMES, 2), _pick(rng, CITIES, 2)
    if size == 1:
        facts, who, city = [f"{people[0]} lives in {cities[0]}."], people[0], cities[0]
    elif size == 2:
        facts = [f"{p} lives in {c}." for p, c in zip(people, cities)]
        k = int(rng.integers(2))
        who, city = people[k], cities[k]
    else:
        facts, who, city = [f"{people[0]} lives in {cities[0]}.", f"{people[1]} lives with {people[0]}."], \
            people[1], cities[0]
    facts = [facts[int(i)] for i in rng.permutation(len(facts))]
    avoid = [c.lower() for c in cities if c != city and c in " ".join(facts)]
    return Task(f"{' '.join(facts)} Where does {who} live?",
                {"check": "mention", "word": city.lower(), "avoid": avoid}, city)


def shout(rng: np.random.Generator, size: int) -> Task:
    text = _sized_sentence(rng, size)
    return Task(f"Write this in capitals: {text}", {"check": "words", "words": words(text)},
                text.rstrip("."), ({"kind": "upper"},))


def sort_words(rng: np.random.Generator, size: int) -> Task:
    chosen = _pick(rng, CATEGORIES[_pick(rng, sorted(CATEGORIES))], size + 2)
    while chosen == sorted(chosen):
        chosen = [chosen[int(i)] for i in rng.permutation(len(chosen))]
    return Task(f"Sort alphabetically: {', '.join(chosen)}.", {"check": "words", "words": sorted(chosen)},
                ", ".join(sorted(chosen)))


def compare(rng: np.random.Generator, size: int) -> Task:
    numbers = [int(x) for x in rng.choice(np.arange(1, 100), size=size + 1, replace=False)]
    large = rng.random() < 0.5
    value = max(numbers) if large else min(numbers)
    if size == 1:
        prompt = f"Which is {'larger' if large else 'smaller'}, {numbers[0]} or {numbers[1]}?"
    else:
        listed = ", ".join(map(str, numbers[:-1])) + f" or {numbers[-1]}"
        prompt = f"Which is the {'largest' if large else 'smallest'}: {listed}?"
    return Task(prompt, {"check": "number", "value": value}, str(value))


def story(rng: np.random.Generator, size: int) -> Task:
    """A count that changes ``size`` times; each change depends on the running total."""
    name, fruit = _pick(rng, NAMES), _plural(_pick(rng, CATEGORIES["fruits"]))
    total = int(rng.integers(2, 10))
    start, events = total, []
    for _ in range(size):
        k = int(rng.integers(1, 6))
        if rng.random() < 0.5 or total < 2:
            events.append(f"gets {k} more")
            total += k
        else:
            k = min(k, total - 1)
            events.append(f"eats {k}")
            total -= k
    changes = f" and {events[0]}" if size == 1 else ", " + ", ".join(events[:-1]) + f" and {events[-1]}"
    prompt = f"{name} has {start} {fruit}{changes}. How many {fruit} now?"
    return Task(prompt, {"check": "number", "value": total}, str(total))


REQUESTS = (greet, list_items, yes_no, repeat, backwards, count, lookup, shout, sort_words, compare, story)


def _sized_sentence(rng: np.random.Generator, size: int) -> str:
    low, high = {1: (3, 5), 2: (5, 7), 3: (6, 9)}[size]
    while True:
        text = sentence(rng)
        if low <= len(words(text)) <= high:
            return text


# -- modifiers and the family ------------------------------------------------------------------
def _modifiers(rng: np.random.Generator, k: int, implied: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    has_case = any(m["kind"] in ("upper", "lower") for m in implied)
    kinds = ["start", "end", "quote"] + ([] if has_case else ["case"])
    mods = []
    for kind in _pick(rng, kinds, k):
        kind = _pick(rng, ("upper", "lower")) if kind == "case" else kind
        mod: dict[str, Any] = {"kind": kind}
        if kind in ("start", "end"):
            mod["word"] = _pick(rng, START_WORDS if kind == "start" else END_WORDS)
        mods.append(mod)
    return mods


def apply_modifiers(reply: str, mods: list[dict[str, Any]]) -> str:
    """The canonical reply with the modifiers applied (capitalized like a sentence)."""
    by_kind = {mod["kind"]: mod for mod in mods}
    if "end" in by_kind:
        reply = f"{reply}, {by_kind['end']['word']}"
    if "start" in by_kind:
        reply = f"{by_kind['start']['word']}, {reply}"
    reply = reply[:1].upper() + reply[1:]
    if "upper" in by_kind:
        reply = reply.upper()
    if "lower" in by_kind:
        reply = reply.lower()
    return f'"{reply}"' if "quote" in by_kind else reply


class InstructFamily(TaskFamily):
    name = "instruct"
    max_prompt_chars = MAX_PROMPT
    max_answer_chars = MAX_REPLY
    decode = "causal"  # free-form replies of any length up to 60: generated, not filled into slots

    def generate(self, rng: np.random.Generator, difficulty: int) -> Instance:
        level = LEVELS[difficulty]
        while True:
            request = _pick(rng, REQUESTS)
            task = request(rng, level.size)
            extra = _modifiers(rng, level.mods, task.mods)
            phrases = [_pick(rng, MOD_PHRASES[m["kind"]]).format(m.get("word", "")) for m in extra]
            prompt = " ".join([task.prompt, *phrases])
            mods = [*task.mods, *extra]
            reply = apply_modifiers(task.reply, mods)
            if len(prompt) <= MAX_PROMPT and len(reply) <= MAX_REPLY:
                break
        return Instance(self.name, difficulty, prompt, reply, key=prompt,
                        data={"request": request.__name__, "content": task.content, "mods": mods})

    def verify(self, instance: Instance, answer: str) -> Verdict:
        return verify(instance.data, answer)


class InstructEnv(TextTaskEnv):
    """Instruction following with checkable constraints (requests and levels in ``envs.families.instruct``).

    ## Observation
    The prompt, one or two short English sentences with up to three added constraints, e.g.
    ``Say hello to Anna. Use capitals. End with done.`` (at most 128 characters).

    ## Action
    The reply, free text (the oracle's is at most 60 characters, e.g. ``HELLO ANNA, DONE``).
    No tool applies: a tool call runs but only spends the call budget.

    Printable ASCII only, the answer at most 60 characters (``max_answer_chars``) once
    surrounding whitespace is stripped: other text ends the episode with reward 0
    (``TextTaskEnv``).

    ## Reward
    1 when every constraint holds (any reply meeting them, not one string: any three fruits
    from the category, "It has 5 letters" as well as "5"), else 0; with
    ``partial_credit=True``, a reply with the right content earns the fraction of constraints
    met (``verifiers.instruct``).

    ## Episode End
    Terminated after the reply; truncated (reward 0) past the call budget.
    """

    def __init__(self, family: str | TaskFamily = "instruct", **kwargs):
        super().__init__(family, **kwargs)

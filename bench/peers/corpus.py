"""
The sentences of the race: made up from a fixed word list by a seeded
generator, so that every server embeds the same texts in every run, and
all different (no server gets to answer from a cache).

Each sentence is 6 to 20 words, 10 to 30 tokens for all-MiniLM-L6-v2:
the short texts of a search index or a chat history, where padding a
batch to its longest row wastes the most.
"""

from __future__ import annotations

import random

WORDS = """
the of and to in is was that for on with as by at from his her they this
which are be have an one had not but what all were when we there can more
if no out so said up its about than into them only other new some could
time these two may then first any like now my such make over our even most
made after also did many before must through back years where much your way
well down should because each just those people how too little state good
very world still own see men work long get here between both life being
under never day same another know while last might us great old year off
come since against go came right used take three himself few house use
during without again place around however home small found thought went say
part once general high upon school every does got united left number course
war until always away something fact though water less public put think
almost hand enough far took head yet government system better set told
nothing night end why called didn't eyes find going look asked later knew
point next city business give group toward young days let room president
side social given present several order national possible rather second
face per among form important often things looked early white case large
become john need big four within felt children along saw best church ever
least power development light seemed family interest want members mind
country area others done turned although open problem sense service
""".split()


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        words = rng.choices(WORDS, k=rng.randint(6, 20))
        text = " ".join(words).capitalize() + rng.choice((".", ".", ".", "?", "!"))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def workload(requests: int, per_request: int, seed: int) -> list[list[str]]:
    """
    C{requests} inputs of C{per_request} sentences each.
    """
    flat = sentences(requests * per_request, seed)
    return [flat[i * per_request : (i + 1) * per_request] for i in range(requests)]

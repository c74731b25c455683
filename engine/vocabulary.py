"""The closed world of the synthetic scenes: colours, shapes, places, and the words around them.

Shared by the scene generator (what is drawn and said) and the tiny tokenizers (what they must
be able to spell compactly), so the two can never drift apart.
"""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")

# A 3x3 grid of places, named as people describe them; (column, row) from the top left.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}

PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "diamond": "diamonds",
}

# Words the tiny tokenizers must cover besides the scene words: answers, prompts, claims.
COMMON_WORDS: tuple[str, ...] = (
    "yes Yes no No the a an is are there There image picture shows show in at of and with "
    "on one two three four five six seven eight nine describe Describe detail detailed "
    "please Please answer or what What how How many colour color shape object objects "
    "where Where which Which this This it It not The A An Is Are does Does contain "
    "contains see can you You I left right top bottom center middle corner background "
    "white black grey gray small large big facts fact claims claim question questions "
    "list List each Each sentence true false").split()

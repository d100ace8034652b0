"""The strict-format family: prompts that ask for one JSON object, each with the JSON Schema
its answer must match and a correct reference answer. Written for qrecipe; short, so the
answers fit in a few dozen tokens.

A model's output counts as valid when the first JSON object in it parses and validates.
"""

from __future__ import annotations

import json
from typing import Any

_PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
_CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1}, "country": {"type": "string", "minLength": 1},
                   "population_millions": {"type": "number", "exclusiveMinimum": 0}},
    "required": ["city", "country", "population_millions"],
    "additionalProperties": False,
}
_PRODUCT = {
    "type": "object",
    "properties": {"product": {"type": "string", "minLength": 1}, "price": {"type": "number", "minimum": 0},
                   "in_stock": {"type": "boolean"}},
    "required": ["product", "price", "in_stock"],
    "additionalProperties": False,
}
_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string", "minLength": 1},
                   "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                   "attendees": {"type": "integer", "minimum": 0}},
    "required": ["event", "date", "attendees"],
    "additionalProperties": False,
}
_LIST = {
    "type": "object",
    "properties": {"colors": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
    "required": ["colors"],
    "additionalProperties": False,
}

# schema name -> (schema, how the prompt describes its keys)
SCHEMAS: dict[str, tuple[dict, str]] = {
    "person": (_PERSON, '"name" (string) and "age" (integer)'),
    "city": (_CITY, '"city" (string), "country" (string) and "population_millions" (number)'),
    "product": (_PRODUCT, '"product" (string), "price" (number) and "in_stock" (true or false)'),
    "event": (_EVENT, '"event" (string), "date" (YYYY-MM-DD) and "attendees" (integer)'),
    "colors": (_LIST, '"colors" (a list of strings)'),
}

# (schema name, the text to convert, the correct answer)
_CASES: list[tuple[str, str, dict]] = [
    ("person", "Alice is 30 years old.", {"name": "Alice", "age": 30}),
    ("city", "Paris, the capital of France, has about 2.1 million people.",
     {"city": "Paris", "country": "France", "population_millions": 2.1}),
    ("product", "The blue kettle costs 24.99 dollars and is available now.",
     {"product": "blue kettle", "price": 24.99, "in_stock": True}),
    ("event", "The science fair on 2024-05-17 drew 350 visitors.",
     {"event": "science fair", "date": "2024-05-17", "attendees": 350}),
    ("colors", "The flag is red, white and green.", {"colors": ["red", "white", "green"]}),
    ("person", "Bob turned 45 last week.", {"name": "Bob", "age": 45}),
    ("city", "Tokyo in Japan is home to roughly 14 million residents.",
     {"city": "Tokyo", "country": "Japan", "population_millions": 14}),
    ("product", "Running shoes, priced at 80 dollars, are sold out.",
     {"product": "running shoes", "price": 80, "in_stock": False}),
    ("event", "About 1200 people came to the city marathon on 2023-10-01.",
     {"event": "city marathon", "date": "2023-10-01", "attendees": 1200}),
    ("colors", "Her garden has yellow tulips and purple irises.", {"colors": ["yellow", "purple"]}),
]


def json_cases() -> list[tuple[str, str, str]]:
    """(instruction, reference answer as JSON text, schema name) for every prompt, in a fixed order."""
    out = []
    for schema_name, text, answer in _CASES:
        keys = SCHEMAS[schema_name][1]
        instruction = (f"Convert the text into a JSON object with exactly the keys {keys}. "
                       f"Reply with the JSON object only.\nText: {text}")
        out.append((instruction, json.dumps(answer), schema_name))
    return out


def first_json_object(text: str) -> Any | None:
    """The first balanced {...} in text, parsed; None if there is none or it does not parse.

    Models often wrap JSON in prose or code fences, so the object is searched for rather than
    requiring the whole output to be JSON; string contents are skipped when counting braces.
    """
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            c = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    try:
                        return json.loads(text[start:i + 1])
                    except json.JSONDecodeError:
                        break
        start = text.find("{", start + 1)
    return None


def is_valid_json_answer(text: str, schema_name: str) -> bool:
    import jsonschema

    obj = first_json_object(text)
    if obj is None:
        return False
    return jsonschema.Draft202012Validator(SCHEMAS[schema_name][0]).is_valid(obj)
